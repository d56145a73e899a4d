"""What the `cancellations` command line and the console share: the broker as a tool sees it
(`bus`), dead letters (`dlq`), one-line event summaries (`summaries`), practice settings files
(`practice`), the demo morning (`demo`), reports (`report`) and where the read APIs are (`readapi`)."""
