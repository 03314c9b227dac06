"""``manage.py set_desired_state``: change the desired state from a shell."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from balancer.chat_template import GEMMA_CHAT_TEMPLATE
from balancer.desired_state import DesiredState, DesiredStateError
from balancer.pools import DEFAULT_POOL, PoolError
from balancer.services import (
    desired_state_current,
    desired_state_update,
    pool_create,
    pool_names,
    pool_set_aliases,
)


class Command(BaseCommand):
    help = (
        "Set a pool's desired state (model, chat template, parameters) and push "
        "it to the pool's agents."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--pool",
            default=DEFAULT_POOL,
            help="the model pool whose state to set, made if it does not exist "
            f"(default {DEFAULT_POOL!r})",
        )
        parser.add_argument(
            "--alias",
            action="append",
            default=None,
            metavar="MODEL",
            help="a model name that routes to the pool (repeat for several); "
            "replaces the pool's aliases",
        )
        parser.add_argument("--local-model", help="absolute GGUF path on the agents")
        parser.add_argument(
            "--gemma-template",
            action="store_true",
            help="use Gemma's turn format as the chat template override",
        )
        parser.add_argument(
            "--chat-template-file",
            metavar="PATH",
            help="a Jinja chat template file to use as the chat template override",
        )
        parser.add_argument("--system-prompt", help="default system prompt")
        parser.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="NAME=JSON",
            help="an inference parameter, e.g. --param temperature=0.2",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        pool = options["pool"]
        try:
            if pool not in pool_names():
                pool_create(name=pool)
                self.stdout.write(f"pool {pool!r} created")
            if options["alias"] is not None:
                pool_set_aliases(name=pool, aliases=options["alias"])
        except PoolError as error:
            raise CommandError(str(error)) from None
        state = desired_state_current(pool=pool).to_json()
        if options["local_model"]:
            state["model"] = {"LocalToAgent": options["local_model"]}
        if options["gemma_template"]:
            state["chat_template_override"] = {"content": GEMMA_CHAT_TEMPLATE}
            state["use_chat_template_override"] = True
        if options["chat_template_file"]:
            try:
                with open(options["chat_template_file"], encoding="utf-8") as file:
                    template = file.read()
            except OSError as error:
                raise CommandError(f"--chat-template-file: {error}") from None
            state["chat_template_override"] = {"content": template}
            state["use_chat_template_override"] = True
        if options["system_prompt"] is not None:
            state["default_system_prompt"] = options["system_prompt"]
        for assignment in options["param"]:
            name, _, raw = assignment.partition("=")
            try:
                state["inference_parameters"][name] = json.loads(raw)
            except json.JSONDecodeError:
                state["inference_parameters"][name] = raw
        try:
            desired = DesiredState.from_json(state)
        except DesiredStateError as error:
            raise CommandError(str(error)) from None
        revision = desired_state_update(
            state=desired, note="set_desired_state", pool=pool
        )
        self.stdout.write(f"desired state of pool {pool!r} saved as {revision}")
