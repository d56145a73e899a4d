"""The console: pages for people over the six services, and the development sinks for mail and SMS."""
