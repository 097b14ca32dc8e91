"""Jinja2 templates (autoescaped, translated). Each package renders its own pages with
:func:`templates_for`, whose loader also finds the shared layout (``base.html``)."""

from __future__ import annotations

from pathlib import Path

import jinja2
from starlette.templating import Jinja2Templates

from carebridge import i18n
from carebridge.http import csrf

SHARED = Path(__file__).with_name("templates")


@jinja2.pass_context
def _csrf_token(context: jinja2.runtime.Context) -> str:
    return csrf.token(context["request"])


def templates_for(*directories: Path) -> Jinja2Templates:
    loader = jinja2.FileSystemLoader([*directories, SHARED])
    environment = jinja2.Environment(loader=loader, autoescape=True, extensions=["jinja2.ext.i18n"])
    # {{ _("...") }}, {{ ngettext(...) }} and {% trans %} look up carebridge.i18n at each
    # render, in the locale it selects. Newstyle: translations are autoescaped and take
    # their variables by name (_("Hello %(name)s", name=...)), so a translator can't
    # break the markup or drop a placeholder unnoticed. The i18n extension adds this
    # method to the environment at run time, hence the ignore.
    environment.install_gettext_callables(  # type: ignore[attr-defined]
        i18n.gettext, i18n.ngettext, newstyle=True
    )
    # {{ message | translated }}: a message chosen in Python (an error, a notice, marked
    # there with N_ so extraction finds it), looked up at render in the page's locale and
    # escaped like any value. Never _(variable): _() output is trusted markup, and a
    # message may quote what someone typed. A message not in the catalog (one with a value
    # formatted in) shows as it is.
    environment.filters["translated"] = i18n.gettext
    # Every form writes {{ csrf_token() }} into its hidden csrf_token field.
    environment.globals["csrf_token"] = _csrf_token
    return Jinja2Templates(env=environment)


templates = templates_for()
