"""The XMPP transport (SPEC B1): an external component (XEP-0114) built on wokkel.
Never imports another transport.

wokkel 18 needs a few names Twisted dropped; they are put back before any submodule imports
wokkel.
"""

from fanout_tx import wokkel_compat

wokkel_compat.install()
