"""Apache's regular expressions (PCRE) on Python's ``re``.

Apache compiles rule patterns with PCRE, ``DOTALL`` and ``DOLLAR_ENDONLY`` (its
``RegexDefaultOptions``), without UTF mode: ``.`` matches any byte including newline, ``$``
matches only at the very end, ``\\w``/``\\d``/``\\s`` and case folding are ASCII-only.
:func:`compile_pattern` translates the PCRE-isms Python spells differently and rejects,
naming them, the ones Python cannot do.
"""

from __future__ import annotations

import re
import string
import warnings
from dataclasses import dataclass, field

_FLAGS = re.DOTALL | re.ASCII

_SIMPLE_ESCAPES = {
    "z": r"\Z",
    "Z": r"(?=\n?\Z)",
    "h": r"[\t \xa0]",
    "H": r"[^\t \xa0]",
    "v": r"[\n\x0b\x0c\r\x85]",
    "V": r"[^\n\x0b\x0c\r\x85]",
    "R": r"(?:\r\n|[\n\x0b\x0c\r\x85])",
    "e": r"\x1b",
    "a": r"\x07",
}
_PASS_ESCAPES = frozenset("AbBdDsSwWfnrt0123456789")
_REJECTED_ESCAPES = {
    "G": r"\G (match start anchor)",
    "K": r"\K (reset match start)",
    "X": r"\X (extended grapheme)",
    "C": r"\C (single code unit)",
    "p": r"\p{...} (Unicode property)",
    "P": r"\P{...} (Unicode property)",
    "L": r"\L (case conversion)",
    "l": r"\l (case conversion)",
    "U": r"\U (case conversion)",
    "u": r"\u (case conversion)",
    "N": r"\N{...}",
    "g": r"\g subroutine call or relative reference",
}
_CLASS_SETS = {
    "h": r"\t \xa0",
    "v": r"\n\x0b\x0c\r\x85",
    "H": r"\x00-\x08\x0a-\x1f!-\x9f\xa1-\xff",
    "V": r"\x00-\x09\x0e-\x84\x86-\xff",
}
_CLASS_CHARS = {"e": "\x1b", "a": "\x07", "b": "\x08", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_POSIX = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\n\r\x0b\x0c",
    "blank": r" \t",
    "punct": r"!-/:-@\[-`{-~",
    "print": r" -~",
    "graph": r"!-~",
    "cntrl": r"\x00-\x1f\x7f",
    "xdigit": "0-9A-Fa-f",
    "word": r"\w",
    "ascii": r"\x00-\x7f",
}
_CLASS_SPECIAL = frozenset("[]\\^-&~|")
_GROUP_PASS = ("?:", "?=", "?!", "?<=", "?<!", "?>", "?P<", "?P=", "?#")
_FLAG_LETTERS = frozenset("imsx")


class PatternError(Exception):
    """A pattern Python cannot run the way PCRE would; the message says why."""


def compile_pattern(pattern: str, *, nocase: bool) -> re.Pattern[str]:
    """Compile an Apache (PCRE) pattern; raise :class:`PatternError` naming the problem."""
    translated = translate(pattern)
    flags = _FLAGS | (re.IGNORECASE if nocase else 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(translated, flags)
    except (re.error, Warning, OverflowError, RecursionError, ValueError) as exc:
        raise PatternError(f"cannot compile regular expression: {exc}") from None


_PLAIN = frozenset(string.ascii_letters + string.digits + "/-_~%,;:=&@!'\"<>#` ")
_QUANTIFIERS = frozenset("*+?{")


def literal_prefix(pattern: str) -> str | None:
    """The literal text every match of an anchored case-sensitive pattern starts with.

    ``^/shop/(.*)`` gives ``/shop/``. None when there is no such prefix worth testing (the
    pattern is not ``^``-anchored, has an alternation, or starts with a metacharacter).
    Used to skip the regex for URLs that cannot match.
    """
    if not pattern.startswith("^") or "|" in pattern:
        return None
    chars: list[str] = []
    i = 1
    while i < len(pattern):
        c = pattern[i]
        if c in _PLAIN:
            chars.append(c)
            i += 1
        elif c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in ".+*?()[]{}^$|/\\-":
            chars.append(pattern[i + 1])
            i += 2
        else:
            if c in _QUANTIFIERS and chars:
                chars.pop()
            break
    return "".join(chars) or None


def translate(pattern: str) -> str:
    """The Python spelling of a PCRE pattern (see the module docstring)."""
    return _Translator(pattern).run()


@dataclass
class _Translator:
    src: str
    pos: int = 0
    out: list[str] = field(default_factory=list)
    #: Per open group: how many inline-flag scopes we opened in it, and their flags.
    scopes: list[list[str]] = field(default_factory=lambda: [[]])
    multiline: bool = False

    def run(self) -> str:
        self.multiline = bool(re.search(r"\(\?[a-zA-Z-]*m", self.src))
        while self.pos < len(self.src):
            self.step()
        self.close_scopes()
        return "".join(self.out)

    def step(self) -> None:
        c = self.src[self.pos]
        handler = {
            "\\": self.escape,
            "[": self.char_class,
            "(": self.group,
            ")": self.group_end,
            "|": self.alternative,
            "$": self.dollar,
            "{": self.brace,
        }.get(c)
        if handler is None:
            self.out.append(c)
            self.pos += 1
        else:
            handler()

    def fail(self, what: str) -> PatternError:
        return PatternError(f"{what} is not supported (at offset {self.pos})")

    def dollar(self) -> None:
        self.out.append("$" if self.multiline else r"\Z")
        self.pos += 1

    def brace(self) -> None:
        # PCRE (before 10.43) reads "{,n}" as literal text; Python as a quantifier.
        literal = self.src.startswith("{,", self.pos)
        self.out.append(r"\{" if literal else "{")
        self.pos += 1

    def escape(self) -> None:
        self.out.append(self.escape_text(in_class=False))

    def escape_text(self, *, in_class: bool) -> str:
        """The Python spelling of the escape at ``pos`` (which it moves past)."""
        src, i = self.src, self.pos
        if i + 1 >= len(src):
            raise PatternError("pattern ends with a backslash")
        c = src[i + 1]
        self.pos = i + 2
        numeric = self.numeric_escape(c)
        if numeric is not None:
            return numeric
        if in_class:
            raise self.fail(f"\\{c} inside a character class")
        return self.pattern_escape(c)

    def numeric_escape(self, c: str) -> str | None:
        """``\\xhh``, ``\\x{hh}``, ``\\o{ooo}``, ``\\cX`` as ``\\xhh``; None for other escapes."""
        if c == "x":
            return _char(self.hex_escape())
        if c == "o" and self.src.startswith("{", self.pos):
            return _char(self.braced_number(8))
        if c == "c":
            return _char(self.control_escape())
        return None

    def pattern_escape(self, c: str) -> str:
        after = self.src[self.pos : self.pos + 1]
        if c in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[c]
        if c == "Q":
            return self.quoted()
        if c == "k" or (c == "g" and after in ("{", *"0123456789")):
            return self.backreference(c)
        if c == "N" and after != "{":
            return r"[^\n]"
        return "" if c == "E" else self.plain_escape(c)

    def plain_escape(self, c: str) -> str:
        if c in _PASS_ESCAPES or not c.isascii() or not c.isalnum():
            return "\\" + c
        if c in _REJECTED_ESCAPES:
            raise self.fail(_REJECTED_ESCAPES[c])
        raise PatternError(f"unknown escape \\{c} in pattern")

    def hex_escape(self) -> int:
        if self.src.startswith("{", self.pos):
            return self.braced_number(16)
        digits = ""
        while len(digits) < 2 and self.pos < len(self.src) and self.src[self.pos] in _HEX:
            digits += self.src[self.pos]
            self.pos += 1
        return int(digits, 16) if digits else 0

    def braced_number(self, base: int) -> int:
        end = self.src.find("}", self.pos)
        text = self.src[self.pos + 1 : end] if end > 0 else ""
        try:
            value = int(text, base)
        except ValueError:
            raise PatternError(f"bad escape number {{{text}}} in pattern") from None
        if value > 0xFF:
            raise self.fail(f"character code {value:#x} (patterns work on bytes)")
        self.pos = end + 1
        return value

    def control_escape(self) -> int:
        if self.pos >= len(self.src) or not self.src[self.pos].isascii():
            raise PatternError("\\c must be followed by an ASCII character")
        value = ord(self.src[self.pos].upper()) ^ 0x40
        self.pos += 1
        return value

    def quoted(self) -> str:
        end = self.src.find("\\E", self.pos)
        end = len(self.src) if end < 0 else end
        text = self.src[self.pos : end]
        self.pos = min(end + 2, len(self.src))
        return re.escape(text)

    def backreference(self, kind: str) -> str:
        src = self.src
        opener = src[self.pos : self.pos + 1]
        closer = {"<": ">", "'": "'", "{": "}"}.get(opener)
        if closer is None:
            if kind == "g":  # \g1
                digits = re.match(r"\d+", src[self.pos :])
                if digits:
                    self.pos += digits.end()
                    return f"(?:\\{digits.group()})"
            raise self.fail(f"\\{kind} without a group name")
        end = src.find(closer, self.pos + 1)
        if end < 0:
            raise PatternError(f"unterminated \\{kind} reference in pattern")
        name = src[self.pos + 1 : end]
        self.pos = end + 1
        if name.isdigit():
            return f"(?:\\{name})"
        if (kind == "g" and opener != "{") or not name.isidentifier():
            raise self.fail(f"\\{kind}{opener}{name}{closer} (subroutine or relative reference)")
        return f"(?P={name})"

    def char_class(self) -> None:
        src = self.src
        self.pos += 1
        parts = ["["]
        if src.startswith("^", self.pos):
            parts.append("^")
            self.pos += 1
        first = True
        while True:
            if self.pos >= len(src):
                raise PatternError("missing ] at the end of a character class")
            if src[self.pos] == "]" and not first:
                self.pos += 1
                break
            first = False
            parts.append(self.class_range())
        parts.append("]")
        self.out.append("".join(parts))

    def class_range(self) -> str:
        """One class member: a character, a set such as ``\\d``, or a range ``a-z``."""
        low, text = self.class_atom()
        src = self.src
        if (
            low is None
            or not src.startswith("-", self.pos)
            or src[self.pos + 1 : self.pos + 2] in ("]", "")
        ):
            return text
        self.pos += 1
        high, high_text = self.class_atom()
        if high is None:
            return text + "\\-" + high_text
        if high < low:
            raise PatternError("range out of order in character class")
        return text + "-" + high_text

    def class_atom(self) -> tuple[str | None, str]:
        """(the character, its spelling), or (None, spelling) for a set of characters."""
        src, c = self.src, self.src[self.pos]
        if c == "[":
            posix = re.match(r"\[:(\^?)([a-z]+):\]", src[self.pos :])
            if posix:
                return None, self.posix_class(posix)
        if c == "\\":
            return self.class_escape()
        self.pos += 1
        return c, _class_char(c)

    def class_escape(self) -> tuple[str | None, str]:
        src = self.src
        if self.pos + 1 >= len(src):
            raise PatternError("pattern ends with a backslash")
        c = src[self.pos + 1]
        if c in "xoc":
            code = self.escape_text(in_class=True)
            return chr(int(code[2:], 16)), code
        self.pos += 2
        if c in "dDsSwWhHvV":
            return None, _CLASS_SETS.get(c, "\\" + c)
        if c in _CLASS_CHARS:
            return _CLASS_CHARS[c], _char(ord(_CLASS_CHARS[c]))
        if c.isdigit():
            return self.class_octal(c)
        if c.isascii() and c.isalpha():
            raise self.fail(f"\\{c} inside a character class")
        return c, _class_char(c)

    def class_octal(self, first: str) -> tuple[str, str]:
        digits = first
        while len(digits) < 3 and self.src[self.pos : self.pos + 1] in tuple("01234567"):
            digits += self.src[self.pos]
            self.pos += 1
        if not all(d in "01234567" for d in digits) or int(digits, 8) > 0xFF:
            raise PatternError(f"bad octal escape \\{digits} in a character class")
        code = int(digits, 8)
        return chr(code), _char(code)

    def posix_class(self, match: re.Match[str]) -> str:
        negated, name = match.groups()
        if name not in _POSIX:
            raise PatternError(f"unknown POSIX class [:{name}:] in pattern")
        if negated:
            raise self.fail(f"negated POSIX class [:^{name}:]")
        self.pos += match.end()
        return _POSIX[name]

    def group(self) -> None:
        src, i = self.src, self.pos
        rest = src[i + 1 : i + 4]
        if src.startswith("(*", i):
            raise self.fail("backtracking verb (*...)")
        if re.match(r"\(\?(?:R|[+-]?\d+|&\w+|P>\w+)\)", src[i:]):
            raise self.fail("recursion or subroutine call")
        if rest.startswith(("?|", "?C")):
            raise self.fail("branch reset (?| or callout (?C")
        if not rest.startswith("?"):
            self.open_group("(", 1)
        elif rest.startswith("?#"):
            end = src.find(")", i)
            if end < 0:
                raise PatternError("missing ) after comment in pattern")
            self.pos = end + 1
        elif rest.startswith(("?<", "?'")) and not rest.startswith(("?<=", "?<!")):
            self.named_group()
        elif rest.startswith(_GROUP_PASS):
            self.pass_group_opener()
        elif rest.startswith("?("):
            self.conditional()
        else:
            self.flag_group()

    def open_group(self, text: str, length: int) -> None:
        self.out.append(text)
        self.pos += length
        self.scopes.append([])

    def pass_group_opener(self) -> None:
        src, i = self.src, self.pos
        for opener in sorted(_GROUP_PASS, key=len, reverse=True):
            if src.startswith("(" + opener, i):
                if opener == "?P=":
                    end = src.find(")", i)
                    self.out.append(src[i : end + 1] if end > 0 else src[i:])
                    self.pos = end + 1 if end > 0 else len(src)
                    return
                self.open_group("(" + opener, len(opener) + 1)
                return

    def named_group(self) -> None:
        src, i = self.src, self.pos
        closer = ">" if src[i + 2] == "<" else "'"
        end = src.find(closer, i + 3)
        name = src[i + 3 : end] if end > 0 else ""
        if not name.isidentifier():
            raise PatternError(f"bad group name {name!r} in pattern")
        self.open_group(f"(?P<{name}>", end + 1 - i)

    def conditional(self) -> None:
        match = re.match(r"\(\?\((\d+|[A-Za-z_]\w*)\)", self.src[self.pos :])
        if not match or match.group(1) in ("R", "DEFINE"):
            raise self.fail("this kind of conditional group")
        self.open_group(match.group(), match.end())

    def flag_group(self) -> None:
        match = re.match(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])", self.src[self.pos :])
        if not match:
            raise self.fail("group syntax (?" + self.src[self.pos + 2 : self.pos + 3])
        on, off, end = match.group(1), match.group(2) or "", match.group(3)
        bad = set(on + off) - _FLAG_LETTERS
        if bad:
            raise self.fail(f"inline option {''.join(sorted(bad))!r}")
        spec = on + ("-" + off if off else "")
        if end == ":":
            self.open_group(f"(?{spec}:", match.end())
        elif not self.out and not off and on:
            self.out.append(f"(?{on})")
            self.pos += match.end()
        else:
            self.pos += match.end()
            if spec:
                self.out.append(f"(?{spec}:")
                self.scopes[-1].append(spec)

    def close_scopes(self) -> None:
        self.out.append(")" * len(self.scopes[-1]))

    def alternative(self) -> None:
        specs = self.scopes[-1]
        self.out.append(")" * len(specs) + "|" + "".join(f"(?{s}:" for s in specs))
        self.pos += 1

    def group_end(self) -> None:
        if len(self.scopes) == 1:
            raise PatternError("unmatched ) in pattern")
        self.close_scopes()
        self.scopes.pop()
        self.out.append(")")
        self.pos += 1


_HEX = frozenset("0123456789abcdefABCDEF")


def _char(code: int) -> str:
    return f"\\x{code:02x}"


def _class_char(c: str) -> str:
    if c in _CLASS_SPECIAL:
        return "\\" + c
    if c < " " or c == "\x7f":
        return _char(ord(c))
    return c
