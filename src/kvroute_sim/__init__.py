"""kvroute_sim: vLLM-faithful simulated model servers (a separate product; imports no kvroute).

Modules (import them directly; this package imports nothing so the engine stays light):

- ``config``: ``EngineConfig`` / ``ServerConfig`` / ``FaultConfig``, ``engine_profile(name)``,
  ``load_server_config(yaml)``; profiles ``h100-llama3-8b`` (calibrated), ``tiny``, ``slow``.
- ``engine``: the sans-IO ``Engine`` (vLLM V1 scheduler steps), ``SimRequest``,
  ``StepOutcome``, ``EngineStats``; ``kvcache``: the prefix-cached ``BlockPool`` and KV events;
  ``steptime``: the step-time formula.
- ``virtual``: ``VirtualServer`` (virtual time); ``realtime``: ``RealtimeEngine`` (asyncio).
- ``tokenizer``: the deterministic word-piece tokenizer and ``block_hashes`` (public);
  ``text``: optional real HF tokenizers and ``make-tokenizer``.
- ``server``: the aiohttp app (``server.app.SimServer``), metrics text, OpenAI shapes, ZMQ KV
  events; ``cluster.SimCluster``: N servers in one loop; ``cli``: ``kvroute sim``.
- ``calibrate`` / ``loadtest``: ``python -m`` entry points for docs/simulator.md's figures.
"""
