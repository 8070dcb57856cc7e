"""Online backup and restore: `take` copies a running cluster's shards into a backup folder,
`restore` rebuilds a data directory from one (and the log archive, to a moment), `manifest` is what
a backup says it holds."""
