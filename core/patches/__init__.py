"""The built-in variants as patches over the model of v6.19 (``core/``), one module per
patch, each overriding the functions its kernel patch changes under their kernel names
and adding the ones it adds (see :mod:`core.variants` for how they stack):

* ``refactor_2026``: seed 000's single ``set_external_spte(old, new)`` hook, called
  inside the frozen window (the "after" order of PATCH 07/17);
* ``hugepage_rfc``: private 2M leaves and their split (RFC v5 "TDX: Dynamic PAMT +
  S-EPT Hugepage", with guest_memfd's 2M folios under it);
* ``hunt_a1`` ... ``hunt_d``: each opens one row of seed 002's table to the mirror root,
  the what-if path Yan Zhao's (a1) ... (d) name; ``read_lock_mirror_zap`` is what
  (c) and (d) share: the atomic setter's guard against zapping a mirror SPTE under the
  read lock, lifted.
"""
