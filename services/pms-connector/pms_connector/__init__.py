"""Reference PMS connector: applies pms-sync commands to a practice management system over
HTTP and acknowledges each one. Sample code for partners; see README.md."""
