"""The provisioning package's error tree.

::

ProvisioningError
└── KeyFileError     a key file is missing, unreadable, of the wrong type or too open
"""

from __future__ import annotations


class ProvisioningError(Exception):
    """Base class of every provisioning error."""


class KeyFileError(ProvisioningError):
    """A key file cannot be used."""
