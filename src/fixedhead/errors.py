"""The one exception type that means "the user asked for something we cannot do", and how to quote a value."""


class UserError(ValueError):
    """Bad input from the user: the CLI prints the message on one line and exits with code 2."""


def shown(value, limit: int = 60) -> str:
    """repr(value) cut to about `limit` characters, for messages: a hostile value may be huge (or an
    alias bomb whose full repr never ends), so nothing is formatted whole into an error.
    Containers are walked only as far as the limit needs."""
    return one_line(_short_repr(value, limit + 1), limit)


def _short_repr(value, budget: int) -> str:
    if isinstance(value, dict):
        parts, used = [], 2
        for key, item in value.items():
            if used > budget:
                parts.append("...")
                break
            part = f"{_short_repr(key, budget - used)}: {_short_repr(item, budget - used)}"
            parts.append(part)
            used += len(part) + 2
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, (list, tuple)):
        parts, used = [], 2
        for item in value:
            if used > budget:
                parts.append("...")
                break
            part = _short_repr(item, budget - used)
            parts.append(part)
            used += len(part) + 2
        return "[" + ", ".join(parts) + "]"
    if isinstance(value, (str, bytes)):
        return repr(value[: budget + 1])
    text = repr(value)
    return text[: budget + 1]


def reason(error: BaseException, limit: int = 100) -> str:
    """The first line of an exception's message (or its type's name), cut to `limit` characters."""
    text = str(error).split("\n", 1)[0]
    return one_line(text, limit) if text.strip() else type(error).__name__


def one_line(text: str, limit: int = 2000) -> str:
    """`text` as one line of at most `limit` characters (a path or value in it may hold newlines or be huge)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
