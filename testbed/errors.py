"""Why a shaped link cannot be built or changed: one exception class per failure."""
from __future__ import annotations


class LinkUnavailable(RuntimeError):
    """Shaped links cannot be built here; the message says why (CLIs: exit status 2)."""


class NetAdminUnavailable(LinkUnavailable):
    """Not root / no CAP_NET_ADMIN / `ip netns add` refused / ip or tc missing."""


class ShapingUnavailable(LinkUnavailable):
    """The kernel lacks a qdisc that the requested shape needs (e.g. netem for delay/loss)."""


class CommandFailed(RuntimeError):
    """An `ip` or `tc` command failed after the link was set up."""
