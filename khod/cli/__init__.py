"""The two entry points, khod and khoctl. Only these turn errors into exit codes."""
