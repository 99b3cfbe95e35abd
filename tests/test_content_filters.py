"""The ``%`` directive grammar and the build-id / var-subst content filters, as pure
functions. Expected values marked "Pushpin 1.36" were observed on Debian's pushpin."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.grip.content_filters import (
    apply_content_filters,
    build_id,
    filter_response_body,
    render_content,
    render_id,
    substitute_vars,
)
from fanout_tx.grip.directives import FilterError, expand


def echo(directive: str, argument: bytes | None) -> bytes:
    """A handler that shows what the grammar passed it."""
    return b"<%s:%s>" % (directive.encode(), b"-" if argument is None else argument)


def escape_field(value: bytes) -> bytes:
    """``value`` written inside ``%(...)``: backslash before ``\\`` and ``)``."""
    return value.replace(b"\\", b"\\\\").replace(b")", b"\\)")


class DirectiveGrammarTests(SynchronousTestCase):
    def test_directives(self) -> None:
        """%% is a %, %X has no argument, %(ARG)X has one (escapes inside), () is none."""
        self.assertEqual(expand(b"a %% b %I c", echo), b"a % b <I:-> c")
        self.assertEqual(expand(b"%(x\\)y\\\\z)s", echo), b"<s:x)y\\z>")
        self.assertEqual(expand(b"%()I%(a)%", echo), b"<I:-><%:a>")
        self.assertEqual(expand(b"", echo), b"")

    def test_malformed_templates_fail(self) -> None:
        for template, reason in (
            (b"100%", "expected a directive after '%' at position 3"),
            (b"%1", "unknown directive '1'"),
            (b"% x", "unknown directive ' '"),
            (b"%(", "expected a character after '('"),
            (b"%(abc", "unterminated field starting at position 1"),
            (b"%(a\\", "expected a character after '\\'"),
            (b"%(a)", "expected a directive after ')'"),
        ):
            with self.subTest(template=template):
                with self.assertRaises(FilterError) as caught:
                    expand(template, echo)
                self.assertIn(reason, str(caught.exception))

    def test_handler_errors_get_the_position(self) -> None:
        def refuse(directive: str, argument: bytes | None) -> bytes:
            raise FilterError("no")

        with self.assertRaises(FilterError) as caught:
            expand(b"abc%I", refuse)
        self.assertEqual(str(caught.exception), "no at position 4")

    @given(st.binary())
    def test_text_without_percent_is_unchanged(self, data: bytes) -> None:
        text = data.replace(b"%", b"")
        self.assertEqual(expand(text, echo), text)

    @given(st.binary())
    def test_doubled_percent_round_trips(self, data: bytes) -> None:
        self.assertEqual(expand(data.replace(b"%", b"%%"), echo), data)

    @given(st.binary(min_size=1), st.binary(), st.binary())
    def test_any_literal_id_can_be_written(self, literal: bytes, before: bytes,
                                           after: bytes) -> None:
        """%(LITERAL)I gives back any non-empty LITERAL once escaped, between any text."""
        template = (before.replace(b"%", b"%%") + b"%(" + escape_field(literal) + b")I"
                    + after.replace(b"%", b"%%"))
        self.assertEqual(render_content(template, None), before + literal + after)


class BuildIdTests(SynchronousTestCase):
    def test_render_id(self) -> None:
        """id_format names channels; a channel without a prev-id is an unknown name; with
        no channels at all there is no id."""
        ids = {"a": "2", "b": "7", "c": None}
        self.assertEqual(render_id("%(a)s_%(b)s", ids), b"2_7")
        self.assertEqual(render_id("fixed", ids), b"fixed")
        self.assertIsNone(render_id("%(a)s", {}))
        for bad in ("%(c)s", "%(zz)s", "%s", "%(a)d"):
            with self.subTest(id_format=bad):
                self.assertRaises(FilterError, render_id, bad, ids)

    def test_content(self) -> None:
        """Pushpin 1.36: %I, %(LITERAL)I with \\) escaped, %% and hex encoding."""
        meta = {"id_format": "%(a)s_%(b)s"}
        ids = {"a": "3", "b": "8"}
        self.assertEqual(build_id(b"id: %I lit=%(x\\)y)I pct=%%\n", meta, ids),
                         b"id: 3_8 lit=x)y pct=%\n")
        hex_meta = {"id_format": "%(a)s", "id_encoding": "hex"}
        self.assertEqual(build_id(b"id: %I lit=%(ab)I", hex_meta, {"a": "2"}),
                         b"id: 32 lit=6162")

    def test_errors(self) -> None:
        for content, meta, ids, reason in (
            (b"%I", {}, {"a": "1"}, "needs the subscription meta 'id_format'"),
            (b"x", {}, {"a": "1"}, "needs the subscription meta 'id_format'"),
            (b"%I", {"id_format": "%(b)s"}, {"a": "1"},
             "failed to render id_format: no such channel prev-id 'b'"),
            (b"%I", {"id_format": "%(a)s", "id_encoding": "b64"}, {"a": "1"},
             "unsupported id_encoding 'b64'"),
            (b"%I", {"id_format": "%(a)s"}, {}, "no id given"),
            (b"%(a)s", {"id_format": "%(a)s"}, {"a": "1"}, "unknown directive 's'"),
        ):
            with self.subTest(content=content, meta=meta):
                with self.assertRaises(FilterError) as caught:
                    build_id(content, meta, ids)
                self.assertIn(reason, str(caught.exception))

    def test_response_body_has_no_prev_ids(self) -> None:
        """Pushpin 1.36: the origin's body of a stream hold only gets literal ids."""
        meta = {"id_format": "%(a)s"}
        self.assertEqual(filter_response_body(b"start %(x)I %%\n", ["build-id"], meta),
                         b"start x %\n")
        self.assertEqual(filter_response_body(b"100%", ["var-subst"], meta), b"100%")
        self.assertEqual(filter_response_body(b"", ["build-id"], {}), b"")
        self.assertRaises(FilterError, filter_response_body, b"id: %I", ["build-id"], meta)


class VarSubstTests(SynchronousTestCase):
    def test_substitution(self) -> None:
        self.assertEqual(substitute_vars(b"%(a)s-%(b)s 100%%", {"a": "1", "b": "\u00e9"}),
                         b"1-\xc3\xa9 100%")
        for bad in (b"%(c)s", b"%s", b"%I", b"100%"):
            with self.subTest(content=bad):
                self.assertRaises(FilterError, substitute_vars, bad, {"a": "1"})

    def test_both_filters_apply_in_the_listed_order(self) -> None:
        """Pushpin 1.36: each filter sees the previous one's output, so %% escapes a
        directive meant for the next filter."""
        meta = {"id_format": "%(a)s", "user": "ann"}
        asked: list[bool] = []

        def prev_ids() -> dict[str, str | None]:
            asked.append(True)
            return {"a": "5"}

        self.assertEqual(apply_content_filters(("build-id", "var-subst"), b"%I %%(user)s",
                                               meta, prev_ids), b"5 ann")
        self.assertEqual(apply_content_filters(("var-subst", "build-id"), b"%(user)s %%I",
                                               meta, prev_ids), b"ann 5")
        self.assertRaises(FilterError, apply_content_filters, ("var-subst", "build-id"),
                          b"%I", meta, prev_ids)
        self.assertEqual(apply_content_filters(("skip-self", "var-subst"), b"%(user)s",
                                               meta, prev_ids), b"ann")
        self.assertEqual(len(asked), 2)  # prev ids only for build-id
