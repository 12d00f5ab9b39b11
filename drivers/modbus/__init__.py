"""Modbus TCP and RTU (RS485) meters: polling, decoding and relay/valve switching.

`builder.build_modbus` is the entry point the daemon uses; see ``docs/modbus.md``. Nothing is
imported here, so that a site's config (`config`) loads without pymodbus and pyserial, which
only a site with Modbus buses pays for.
"""
