"""The gateway's pure core: the OpenAI-compatible front door's decisions without its I/O.

API keys (apikeys), per-account rate limits (limits), addon-aware replica choice (routing) and
OpenAI-format error bodies (errors). (The autoscaling recommender is the operator's: it runs in
its leader, from the load the gateways export; see graft.plan.autoscale.) Nothing here
sleeps, reads a clock of its own or talks to the network: time is passed in (a `now`, or a clock
function given at construction), so every rule is tested with plain inputs and outputs.
"""
