"""Pre-kexec checks (khoctl check, khoctl kexec): is the outgoing KHO state sound, and
will the target kernel take it? ``run.run_checks`` runs them all in order.

Each check is version-aware (KERNEL-INTERFACES.md sections 3, 6, 8): ``finalize`` exists
only in 6.16-7.0, ``out/fdt`` only after a cold boot (7.3 seen), the scratch files are
``bootmem_*`` from 7.4, kexec-metadata exists from 7.1.
"""
