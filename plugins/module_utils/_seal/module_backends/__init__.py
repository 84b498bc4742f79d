# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_seal's states, all on the node, one file each: ``plan()`` says what must change and changes nothing
(check mode returns it, ``--diff`` shows its before/after), ``apply()`` makes the change."""
