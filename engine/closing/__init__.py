"""Closing: what happens to a session after it closes. Its content goes into session memory, then a
summary is made.

A close, from the route to the index:
- `POST /sessions/{id}/close` (api.routes.sessions) sends EndSession to the session's shard;
- the session shard applies it (closed, `summary_status: pending`) and logs it; only after the log
  write does it hand the job to its ClosingJobs (engine.runtime.session_shards);
- the job runs its sequence (job.py): read the job, index the turns (indexing.py), one
  StartSummary record, the model's text (summary.py cuts the conversation and judges the text,
  quality.py says what is degenerate), index the summary, one FinishSummary record;
- while a session is open, live memory (live.py) puts its turns into session memory as they are
  appended, a tick at a time, so the job adds only the turns left and the whole-session entry;
- an imported session whose summary is kept runs only a short branch of it: its turns and that
  summary back into session memory, one MarkIndexed record, no model;
- what it calls outside its shard is ClosingPorts (ports.py): the embedders, the organization's
  memory shard, the summarizer pool; engine.runtime.closing_ports implements them over Ray.

Imports engine.sessions (the job's ops), engine.memory (the index entries and memory ops) and
engine.models (the model's input and output types); never Ray, never engine.runtime.
"""
