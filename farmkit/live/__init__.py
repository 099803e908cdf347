"""The live wing: a paper session on the run kernel, fed from the bus.

``session`` (``fk.paper``), ``router`` (parse, dedupe and route bus messages to feeds), ``inbox``
(the journal of acknowledged bars), ``checkpoint`` and ``resume`` (a killed pod carries on), ``replay``
(a market replayed on the session's own bus) and ``warmup`` (the bars that prime the indicators).
"""
