"""`podbay images`: build and list the catalog's workspace images on this Docker engine.
Registered through the `podbay.commands` entry points."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cmd_images(args) -> int:
    from ...config import ConfigError, default_config_path, load_config
    from .images import DockerUnavailable, ImageBuildError, build_image, buildable, docker_client, present

    config = Path(args.config or default_config_path()).absolute()
    try:
        cfg = load_config(config)
        client = docker_client(timeout=3600)
        if args.images_command == "ls":
            found = present(client, cfg.images)
            for image in cfg.images:
                state = "present" if found[image.name] else (
                    "missing: podbay images build " + image.name if image.build else "missing (no build folder)")
                print(f"{image.name:<12} {image.image:<32} {state}")
            return 0
        images = buildable(cfg, args.names)
        if not images:
            print(f"podbay images: no image in {config} has a build folder", file=sys.stderr)
            return 1
        cache = Path(args.cache_dir).absolute()
        for image in images:
            image_id = build_image(client, image, config, cache, lambda line: print(line, flush=True))
            print(f"built {image.name}: {image.image} ({image_id[:19]})", flush=True)
        return 0
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
    except (DockerUnavailable, ImageBuildError) as e:
        print(f"podbay images: {e}", file=sys.stderr)
    return 1


def register(sub) -> None:
    images = sub.add_parser("images", help="build and list the catalog's workspace images (Docker)")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    build = images_sub.add_parser("build", help="build catalog images that have a build folder")
    build.add_argument("names", nargs="*", metavar="NAME", help="catalog names (default: every buildable image)")
    build.add_argument("--cache-dir", default=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "podbay"),
                       help="debootstrap root and wheels are prepared here (default: %(default)s)")
    ls = images_sub.add_parser("ls", help="which catalog images this Docker engine has")
    for p_ in (build, ls):
        p_.add_argument("--config", help="podbay.yaml (default: PODBAY_CONFIG, ./config/podbay.yaml, "
                                         "or the demo that ships with podbay)")
        p_.set_defaults(func=cmd_images)
