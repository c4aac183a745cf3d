"""Knowledge distillation: teach a small or pruned student from one or more fine-tuned teachers.

Example::

    from edgetl.distill import DistillConfig, distill
    art = distill("edgetl_tinycnn", load_model("teacher.pt"), load_data("mnist5k"), DistillConfig(epochs=20))
    recover = recovery_from(teacher, DistillConfig(epochs=5))   # pruning-recovery hook
"""

from edgetl.distill import students as _students  # noqa: F401 - registers edgetl_tinycnn in the zoo
from edgetl.distill.distiller import DistillConfig, Optimizer, Views, distill, recovery_from, resume_path
from edgetl.distill.losses import FeatureHints, kd_loss, kd_loss_from_probs, parse_feature_pairs, soft_targets
from edgetl.distill.students import TinyCNN, count_flops
from edgetl.distill.teachers import Teacher, agreement_weights, class_map_by_name

__all__ = [
    "DistillConfig",
    "FeatureHints",
    "Optimizer",
    "Teacher",
    "TinyCNN",
    "Views",
    "agreement_weights",
    "class_map_by_name",
    "count_flops",
    "distill",
    "kd_loss",
    "kd_loss_from_probs",
    "parse_feature_pairs",
    "recovery_from",
    "resume_path",
    "soft_targets",
]
