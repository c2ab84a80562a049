from app.engine.lm.stops import StopStringMatcher


def feed_all(matcher: StopStringMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = ""
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out += text
        if hit:
            return out, True
    return out + matcher.flush(), False


def test_stop_split_across_tokens_is_never_emitted():
    out, hit = feed_all(StopStringMatcher(("END",)), ["Hello E", "N", "D and more"])
    assert hit and out == "Hello "


def test_near_miss_is_released():
    out, hit = feed_all(StopStringMatcher(("END",)), ["Hello E", "N", "x"])
    assert not hit and out == "Hello ENx"


def test_earliest_of_several_stops_wins():
    out, hit = feed_all(StopStringMatcher(("world", "lo")), ["hello world"])
    assert hit and out == "hel"


def test_no_stops_passes_through():
    matcher = StopStringMatcher(())
    assert matcher.feed("abc") == ("abc", False)


def test_the_matched_stop_string_is_reported():
    matcher = StopStringMatcher(("world", "lo", "zzz"))
    assert matcher.matched is None
    feed_all(matcher, ["hel", "lo world"])
    assert matcher.matched == "lo"
    missed = StopStringMatcher(("END",))
    feed_all(missed, ["no stop here"])
    assert missed.matched is None
