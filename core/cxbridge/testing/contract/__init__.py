"""Contract tests every destination plugin should pass, switched on by subclassing :class:`PluginContract`.

::

    from cxbridge.testing import PluginContract

    class TestAcme(PluginContract):
        destination_type = "acme"                    # also the entry-point name, unless entry_point says
        def options(self, target):                   # a good config pointed at the fake target
            return {"base_url": target.url(""), "token": "s3cret-token"}

Each check fails with a message that says what to fix. A plugin that talks to something other than the
kit's :class:`~cxbridge.testing.FakeTarget` overrides the ``target`` fixture and the few methods that
program it (:meth:`~PluginContract.fail`, :meth:`~PluginContract.slow`, :meth:`~PluginContract.drop`,
:meth:`~PluginContract.records`). Every skip says why and how to enable the check.
"""

from cxbridge.testing.contract._delivery import DeliveryContract
from cxbridge.testing.contract._options import OptionsContract
from cxbridge.testing.contract._secrets import SecretsContract

__all__ = ["PluginContract"]


class PluginContract(OptionsContract, DeliveryContract, SecretsContract):
    """The contract of a destination plugin, as pytest tests. Subclass it as ``Test…``.

    Set ``destination_type`` and implement ``options(self, target)``; the optional class attributes
    and the methods that program the target are described on :class:`ContractBase
    <cxbridge.testing.contract._base.ContractBase>`.
    """
