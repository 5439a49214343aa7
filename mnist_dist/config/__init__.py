"""The config: one typed tree of dataclasses (schema), built from defaults < a YAML file or recipe < `a.b=value`
overrides (loading), and described key by key for `train --help` and docs/configuration.md (reference)."""

from mnist_dist.config.loading import (  # the package API: re-exported
    all_keys,
    dump,
    field_metadata,
    flatten,
    from_dict,
    load,
    merge,
    parse_override,
    recipe_path,
    recipe_summary,
    recipes,
    resume_conflicts,
    to_dict,
)
from mnist_dist.config.reference import describe, help_text, reference
from mnist_dist.config.schema import (
    LENGTH_FREE_SCHEDULERS,
    MAY_CHANGE,
    MUST_MATCH,
    CheckpointConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrackingConfig,
    TrainConfig,
    global_batch,
)
