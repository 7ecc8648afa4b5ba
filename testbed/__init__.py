"""The link testbed: a real, shaped device->cloud link between two network namespaces.

Modules:
- `link`: `ShapedLink`, two namespaces joined by a veth pair, device->cloud shaped by tc.
- `tbf`: `TbfShape`, the tbf/netem arithmetic (burst, queue depth, tc arguments).
- `namespaces`: `require_net_admin`, `netns_exec_prefix`, `cleanup_stale`, listing/deleting.
- `errors`: `LinkUnavailable` (and its kinds), `CommandFailed`.
- `goodput`: bulk TCP transfers over a link, timed at the receiver; their two ends are the
  programs `python -m testbed.tcp_sink` and `python -m testbed.tcp_source`.

The testbed sits on top of the runtime, beside `bench`: benchmarks, the demo and the root
tests use it; nothing in `device`, `cloud`, `planner` or `common` imports it, and it imports
nothing from them (tests/test_layout.py checks both).

The CPU quota that makes the device behave like a slower one stays in `device.cpu_quota`,
not here: it is what the contract's `coinfer-device ... --cpu-quota F` runs inside the device
process, so the runtime device needs it, and the device must not depend on a testbed.  The
link, by contrast, is built around the device and cloud processes from outside, by whoever
starts them.
"""
from testbed.errors import CommandFailed, LinkUnavailable, NetAdminUnavailable, ShapingUnavailable
from testbed.link import CLOUD_ADDR, DEVICE_ADDR, ShapedLink
from testbed.namespaces import cleanup_stale, netns_exec_prefix, require_net_admin
from testbed.tbf import TbfShape

__all__ = ["CLOUD_ADDR", "DEVICE_ADDR", "CommandFailed", "LinkUnavailable", "NetAdminUnavailable",
           "ShapedLink", "ShapingUnavailable", "TbfShape", "cleanup_stale", "netns_exec_prefix",
           "require_net_admin"]
