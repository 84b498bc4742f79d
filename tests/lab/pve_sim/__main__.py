"""``python3 -P <path>/pve_sim qm|pvesh ARGS``: how bin/qm and bin/pvesh start the simulator."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pve_sim import pvesh, qm  # noqa: E402

TOOLS = {"qm": qm.main, "pvesh": pvesh.main}

if len(sys.argv) < 2 or sys.argv[1] not in TOOLS:
    sys.exit(f"usage: {sys.argv[0]} qm|pvesh ARGS")
sys.exit(TOOLS[sys.argv[1]](sys.argv[2:]))
