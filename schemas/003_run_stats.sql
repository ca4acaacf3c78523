-- 003: the engine's latest per-step figures for a job, written by `nightshift run` at each
-- commit and shown by `nightshift status`: a JSON object (batch size, step tokens, KV
-- blocks used/cached/total, prefix-cache hits, preemptions, engine tokens/s, updated_at).
ALTER TABLE jobs ADD COLUMN run_stats TEXT;
