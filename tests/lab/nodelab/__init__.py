"""The node lab: Proxmox-like nodes built from Linux namespaces on this machine.

Each node has its own network namespace (an address on the lab's bridge), its
own mount and UTS namespaces (hostname pveN; private /var/lib/ironclaw,
/etc/ironclaw, /root, /var/lib/vz and /run/qemu-server; one /etc/pve shared by
all nodes, like pmxcfs), a real swtpm on its loopback and a real sshd. The
entry point is ``tests/lab/lab``; README.md explains the layout.
"""
