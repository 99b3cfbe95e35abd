"""Codecs for bytes from outside the process: JSON input with one error type
(``json_input``), tnetstrings (``tnetstring``) and the Items' wire form between instances
(``item_codec``). Pure; may import the rest of ``core`` only.
"""
