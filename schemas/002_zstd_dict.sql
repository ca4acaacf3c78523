-- 002: a per-job zstd dictionary for result bodies. Short results compress poorly one at
-- a time; a dictionary trained on a job's first results and kept with the job compresses
-- the rest 2-3x better (measured: README "Job pipeline"). zstd_dict_state: 0 = not
-- decided yet, 1 = in use (frames carry its dictionary id), 2 = tried, plain frames kept.
ALTER TABLE jobs ADD COLUMN zstd_dict BLOB;
ALTER TABLE jobs ADD COLUMN zstd_dict_state INTEGER NOT NULL DEFAULT 0;
