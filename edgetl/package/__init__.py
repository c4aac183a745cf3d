"""Packaging for the device: a bundle per target that runs without torch or edgetl and carries its own proof.

Example::

    from edgetl.package import package, verify_bundle
    bundle = package("runs/demo", "bundle-x86", device="x86-cpu")
    verify_bundle(bundle.path).line            # "verified on x86-cpu: ..."
"""

from edgetl.package.bundle import Bundle, package
from edgetl.package.verify import VerifyError, VerifyResult, predict, verify_bundle

__all__ = ["Bundle", "VerifyError", "VerifyResult", "package", "predict", "verify_bundle"]
