"""The pod side: `kubespiffe agent`, serving the SPIFFE Workload API on a Unix socket in the pod.

    agent = Agent(AgentConfig(server=..., token_file=..., bundle_file=..., socket=...))
    await agent.run()     # renew X.509-SVIDs at half-life, follow bundles, serve the Workload API

Modules: `issuer_client` (the issuer API client: key + CSR made here, kubespiffed's SPIFFE ID checked
before the token is sent), `state` (snapshots streams wait on), `workloadapi` (the five Workload API
RPCs), `files` (files mode), `run` (the agent's loops), `main` (the command's entry point).
"""
