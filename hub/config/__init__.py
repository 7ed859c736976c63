"""podbay.yaml: the one file in which the platform team describes images, GPU profiles,
pools, the node inventory, volumes, teams and quotas.

Loading is two passes: pydantic checks the shape of each entry, then checks.py's `check_semantics`
checks what refers to what (a profile's pool exists, a MIG profile exists on the GPUs of
that pool, …). Every error carries its place (`profiles[3]`) and, when the file is YAML,
its line, so `podbay config check` can print all of them at once.

The package: `models` (the schema), `load` (reading), `errors` (each with its place and line), `checks`
(what refers to what).
"""

from .errors import ConfigError, ConfigIssue  # noqa: F401 - as podbay.hub.config
from .load import config_model, load_config, parse_config, sections  # noqa: F401
from .models import (  # noqa: F401 - the schema, as podbay.hub.config
    USERNAME_PATTERN,
    Access,
    Auth,
    ClusterAccounts,
    GpuDecl,
    Image,
    MigDeviceDecl,
    Node,
    PodbayConfig,
    Pool,
    Profile,
    ProfileKind,
    Quota,
    Slug,
    Team,
    TimeSlicing,
    UserName,
    Volume,
    _Model,
    default_config_path,
    parse_profile_id,
    split_ci,
)
