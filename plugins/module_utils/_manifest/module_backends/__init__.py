# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_manifest's states by where they run: node.py on the node, store.py on the store host; the controller's
(trusted, signed, requests, enrolled) are in plugins/plugin_utils/manifest_controller.py and the action plugin."""
