"""The words of every message: Jinja2 templates under `notification/templates/`.

One file per template, recipient, channel and locale:
`templates/<template>/<recipient>.<channel>.<locale>.j2`. An email template defines the blocks
`subject` and `body`; an SMS template is all body. Guarantees: a missing locale falls back to
English (never to no message); a variable a template uses but is not given is an error
(StrictUndefined), so a broken template fails loudly in tests instead of sending a blank.
Messages are plain text, so nothing is HTML-escaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from .domain import DEFAULT_LOCALE

TEMPLATES = Path(__file__).parent / "templates"
_BLANK_LINES = re.compile(r"\n\s*\n(\s*\n)+")  # an optional line left out leaves one blank line, not three


@dataclass(frozen=True)
class Rendered:
    subject: str | None  # email only
    body: str


class Renderer:
    def __init__(self, directory: Path = TEMPLATES) -> None:
        loader = jinja2.FileSystemLoader(directory)
        # Email keeps the template's line layout, so block tags must not leave blank lines;
        # SMS is one line in the end, so a line break after a tag must stay a space.
        self._email = jinja2.Environment(
            loader=loader, undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True
        )
        self._sms = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False)
        # Each (template, recipient, channel, locale) found once, the fallback to English
        # included: Jinja would otherwise stat the file on every message, and look up a locale
        # it does not have again (and raise) on every message in that locale.
        self._found: dict[tuple[str, str, str, str], jinja2.Template] = {}

    def path(self, template: str, recipient: str, channel: str, locale: str) -> str:
        return f"{template}/{recipient}.{channel}.{locale}.j2"

    def _template(self, template: str, recipient: str, channel: str, locale: str) -> jinja2.Template:
        key = (template, recipient, channel, locale)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = self._load(template, recipient, channel, locale)
        return found

    def _load(self, template: str, recipient: str, channel: str, locale: str) -> jinja2.Template:
        env = self._email if channel == "email" else self._sms
        try:
            return env.get_template(self.path(template, recipient, channel, locale))
        except jinja2.TemplateNotFound:
            if locale == DEFAULT_LOCALE:
                raise
            return env.get_template(self.path(template, recipient, channel, DEFAULT_LOCALE))

    def render(self, template: str, recipient: str, channel: str, locale: str, context: dict[str, Any]) -> Rendered:
        tpl = self._template(template, recipient, channel, locale)
        if channel == "email":
            ctx = tpl.new_context(context)
            subject = " ".join("".join(tpl.blocks["subject"](ctx)).split())
            body = _BLANK_LINES.sub("\n\n", "".join(tpl.blocks["body"](ctx)).strip()) + "\n"
            return Rendered(subject=subject, body=body)
        return Rendered(subject=None, body=" ".join(tpl.render(context).split()))
