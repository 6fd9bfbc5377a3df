"""Key slots and key sources.

``slots``    the volume config: key slots wrapping the master key, the keyring
             of volume-secret generations, and the config's own MAC
``sources``  where secrets come from: prompt, pass file, environment,
             an external command, key files
``kms``      AWS KMS key slots
"""
