"""Closing: what happens to a session after it closes. A summary is made, then the session's
content and that summary go into session memory; the model's upgrade of the summary comes last.

A close, from the route to the index:
- `POST /sessions/{id}/close` (api.routes.sessions) sends EndSession to the session's shard;
- the session shard applies it (closed, `summary_status: pending`) and logs it; only after the log
  write does it hand the job to its ClosingJobs (engine.runtime.session_shards);
- the job runs its sequence (job.py): read the job, one StartSummary record, the extract
  (summary.py cuts the conversation), one FinishSummary record (`ready`, its index queued); then
  the index (indexing.py): the turns not in memory yet, the whole-session entry, the summary's
  entry, one MarkIndexed record; then the model's upgrade (model_pass.py, quality.py says what is
  degenerate), one UpgradeSummary record. A summary that fails for good is recorded at once
  (FailSummary, which queues the index) and the session is indexed without a summary entry;
- while a session is open, live memory (live.py) puts its turns into session memory as they are
  appended, a tick at a time, so the job adds only the turns left and the whole-session entry;
- an imported session whose summary is kept runs only a short branch of it: its turns and that
  summary back into session memory, one MarkIndexed record, no model;
- what it calls outside its shard is ClosingPorts (ports.py): the embedders, the organization's
  memory shard, the summarizer pool; engine.runtime.closing_ports implements them over Ray.

Imports engine.sessions (the job's ops), engine.memory (the index entries and memory ops) and
engine.models (the model's input and output types); never Ray, never engine.runtime.
"""
