"""Backup verification: power a restore point on, isolated, check it, leave nothing behind.

``partitions`` reads partition tables and filesystem signatures (pure); ``disks`` walks a
backed-up disk with it; ``checks`` declares the checks and their results; ``report`` writes
the JSON and Markdown report; ``run`` drives one VM's verification through a ``RecoveryJob``.
"""
