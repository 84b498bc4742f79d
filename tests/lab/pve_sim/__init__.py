"""A Proxmox VE CLI simulator: a test double for ``qm`` and ``pvesh``, not Proxmox.

Proxmox VE cannot run on the test machines, so the lab's nodes get these two
commands instead. They keep VM configs where Proxmox does (the cluster-wide
``/etc/pve/nodes/<node>/qemu-server/<vmid>.conf``), print what the real tools
print (formats, messages, exit codes taken from qemu-server, pve-manager,
pve-common, pve-guest-common and pve-cluster) and run hookscripts at the
phases Proxmox runs them. No VM is ever started: "running" is a small state
file in the node's private ``/run/qemu-server``. See README.md for what is
simulated and what is not.
"""
