"""khod: record Linux Kexec HandOver (KHO) chains and the previous kernel's last words."""

__version__ = "0.1.0"
