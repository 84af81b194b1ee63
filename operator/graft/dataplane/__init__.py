"""Programs that run in Graft's pods: `graft fetch`, `graft dataset validate`, `graft train` and
`graft serve`. The operator never imports this package (tests/unit/test_layers.py)."""
