"""The local node: runs Graft's own pods of the local control plane as processes on this machine.

kwok plays the nodes of hack/localcluster and runs nothing. `graft localnode` does the
kubelet's part for the pods Graft's product needs to really run, and leaves every other pod to
kwok: the pods of batch/v1 Jobs that carry `kwok.graft.dev/run-duration` (jobs.py: validation,
inspection, training) and model-server pods whose image is Graft's runtime image (servers.py:
`graft serve` on the pod's IP). The integration tests use the same two classes
(tests/harness/kubelet.py and podservers.py re-export them).
"""
