"""Knowledge distillation: teach a small or pruned student from one or more fine-tuned teachers.

Example::

    from edgetl.distill import DistillConfig, distill
    art = distill(load_model("teacher.pt"), DistillConfig(student="edgetl_tinycnn", epochs=20), data=splits)
    recover = recovery_from(teacher, DistillConfig(epochs=5))   # pruning-recovery hook

Names are imported on first use, so ``edgetl.distill.config`` (what the CLI reads) imports no torch.
"""

from edgetl.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(globals(), {
    "edgetl.distill.config": ("DistillConfig", "Optimizer", "Views", "resume_path"),
    "edgetl.distill.distiller": ("distill", "recovery_from"),
    "edgetl.distill.losses": ("FeatureHints", "kd_loss", "kd_loss_from_probs", "parse_feature_pairs", "soft_targets"),
    "edgetl.distill.students": ("TinyCNN", "count_flops"),
    "edgetl.distill.teachers": ("Teacher", "agreement_weights", "class_map_by_name"),
})
