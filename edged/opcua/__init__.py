"""The optional OPC UA server (the `opcua` extra, asyncua): the PLC's view of the station, modelled on OPC 40100
(Machine Vision) where it fits. `config` is importable without asyncua; `server` imports it lazily."""
