"""Pure desired state and status, one module per kind (named like its reconciler in
graft.controller), plus the engines, storage and Job builders they share. No I/O: plain inputs,
plain outputs, table-tested in tests/unit."""
