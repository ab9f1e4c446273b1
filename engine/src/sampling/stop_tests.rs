use proptest::prelude::*;

use super::*;

fn matcher(stops: &[&str]) -> StopMatcher {
    let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
    StopMatcher::new(&stops).expect("valid stops")
}

/// Pushes every delta (until a stop) and flushes; returns the text and whether a
/// stop matched.
fn run(m: &mut StopMatcher, deltas: &[&str]) -> (String, bool) {
    let mut out = String::new();
    for d in deltas {
        let (text, stopped) = m.push(d);
        out.push_str(&text);
        if stopped {
            assert_eq!(m.push("more"), (String::new(), true));
            assert_eq!(m.flush(), "");
            return (out, true);
        }
    }
    out.push_str(&m.flush());
    (out, false)
}

/// The reference: cut before the stop that completes first (longest on a tie).
fn expected(text: &str, stops: &[String]) -> (String, bool) {
    for end in (1..=text.len()).filter(|&e| text.is_char_boundary(e)) {
        let head = &text[..end];
        if let Some(len) = stops
            .iter()
            .filter(|s| head.ends_with(s.as_str()))
            .map(|s| s.len())
            .max()
        {
            return (text[..end - len].to_owned(), true);
        }
    }
    (text.to_owned(), false)
}

#[test]
fn without_stops_text_passes_straight_through() {
    let mut m = matcher(&[]);
    assert_eq!(m.push("abc"), ("abc".to_owned(), false));
    assert_eq!(m.push(""), (String::new(), false));
    assert_eq!(m.flush(), "");
}

#[test]
fn empty_matcher_and_flush_after() {
    let mut m = StopMatcher::empty();
    assert_eq!(m.push("a END b"), ("a END b".to_owned(), false));
    assert_eq!(m.flush_after(String::from("tail")), "tail");

    let mut m = matcher(&["END"]);
    assert_eq!(m.push("abc E"), ("abc ".to_owned(), false));
    assert_eq!(m.flush_after("x"), "Ex");
    let mut m = matcher(&["END"]);
    assert_eq!(m.push("abc E"), ("abc ".to_owned(), false));
    assert_eq!(m.flush_after("ND and more"), "");
    assert!(m.stopped());
    let mut m = matcher(&["END"]);
    assert_eq!(m.flush_after("one EN"), "one EN");
}

#[test]
fn stop_in_the_middle_of_a_delta() {
    let mut m = matcher(&["END"]);
    assert_eq!(m.push("Hello END world"), ("Hello ".to_owned(), true));
    assert!(m.stopped());
    assert_eq!(m.push("x"), (String::new(), true));
    assert_eq!(m.flush(), "");
}

#[test]
fn stop_spanning_deltas_is_held_then_dropped() {
    let mut m = matcher(&["END"]);
    assert_eq!(m.push("Hel"), ("Hel".to_owned(), false));
    assert_eq!(m.push("lo E"), ("lo ".to_owned(), false));
    assert_eq!(m.push("N"), (String::new(), false));
    assert_eq!(m.push("D more"), (String::new(), true));
}

#[test]
fn a_false_start_is_released() {
    let mut m = matcher(&["END"]);
    assert_eq!(m.push("E"), (String::new(), false));
    assert_eq!(m.push("EN"), ("E".to_owned(), false));
    assert_eq!(m.push("x"), ("ENx".to_owned(), false));
    assert_eq!(m.push("abcEN"), ("abc".to_owned(), false));
    assert_eq!(m.flush(), "EN");
}

#[test]
fn the_first_stop_to_complete_wins() {
    // "bc" completes before "abcd" could, whether or not the text is split.
    assert_eq!(
        run(&mut matcher(&["abcd", "bc"]), &["abcd"]),
        ("a".to_owned(), true)
    );
    assert_eq!(
        run(&mut matcher(&["abcd", "bc"]), &["ab", "cd"]),
        ("a".to_owned(), true)
    );
    // Two stops completing on the same byte: the longer one cuts earlier.
    assert_eq!(
        run(&mut matcher(&["cd", "abcd"]), &["xabcd"]),
        ("x".to_owned(), true)
    );
    assert_eq!(
        run(&mut matcher(&["abcd", "cd"]), &["xa", "b", "cdy"]),
        ("x".to_owned(), true)
    );
    // Overlapping occurrences of one stop.
    assert_eq!(
        run(&mut matcher(&["aab"]), &["a", "a", "a", "b"]),
        ("a".to_owned(), true)
    );
    assert_eq!(
        run(&mut matcher(&["abab"]), &["abacab", "ab"]),
        ("abac".to_owned(), true)
    );
    // Held text is as long as the longest partial match of any stop.
    let mut m = matcher(&["xyz", "yzzz"]);
    assert_eq!(m.push("axy"), ("a".to_owned(), false));
    assert_eq!(m.push("zz"), (String::new(), true));
}

#[test]
fn multibyte_characters_are_never_split() {
    assert_eq!(
        run(&mut matcher(&["é"]), &["café au lait"]),
        ("caf".to_owned(), true)
    );
    assert_eq!(
        run(&mut matcher(&["日本"]), &["今日", "は日", "本語"]),
        ("今日は".to_owned(), true)
    );
    // "è" shares its first byte with "é" but is not a stop.
    let mut m = matcher(&["é"]);
    assert_eq!(m.push("è"), ("è".to_owned(), false));
    // A held suffix is whole characters.
    let mut m = matcher(&["éz"]);
    assert_eq!(m.push("xé"), ("x".to_owned(), false));
    assert_eq!(m.push("🙂"), ("é🙂".to_owned(), false));
    let mut m = matcher(&["🙂!"]);
    assert_eq!(m.push("ok🙂"), ("ok".to_owned(), false));
    assert_eq!(m.flush(), "🙂");
}

#[test]
fn stop_list_limits() {
    let s = |v: &[&str]| {
        StopMatcher::new(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map(|_| ())
    };
    assert_eq!(s(&["a", ""]), Err(SamplingError::EmptyStop { index: 1 }));
    assert_eq!(
        s(&["a", ""]).unwrap_err().to_string(),
        "invalid stop: stop string 1 is empty"
    );
    let many = vec!["x"; MAX_STOPS + 1];
    assert_eq!(
        s(&many).unwrap_err().to_string(),
        "invalid stop: 17 stop strings given, at most 16 allowed"
    );
    assert!(s(&many[..MAX_STOPS]).is_ok());
    let long = "é".repeat(129);
    assert_eq!(
        s(&["ok", &long]).unwrap_err().to_string(),
        "invalid stop: stop string 1 is 258 bytes long, at most 256 bytes allowed"
    );
    assert!(s(&[&"a".repeat(MAX_STOP_BYTES)]).is_ok());
}

#[test]
fn longest_stop_holds_at_most_its_length_less_one() {
    let stop = "a".repeat(MAX_STOP_BYTES);
    let mut m = StopMatcher::new(std::slice::from_ref(&stop)).expect("valid");
    let mut out = String::new();
    for _ in 0..MAX_STOP_BYTES - 1 {
        out.push_str(&m.push("a").0);
    }
    assert_eq!(out, "");
    assert_eq!(m.push("b").0, "a".repeat(MAX_STOP_BYTES - 1) + "b");
    assert_eq!(
        run(&mut m, &[&stop[..100], &stop[100..]]),
        (String::new(), true)
    );
}

/// Pieces of text and stops, over a small alphabet (so stops overlap and occur
/// often) with multi-byte characters.
fn piece() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop::sample::select(vec!['a', 'b', 'é', '日', '🙂', ' ']),
        1..5,
    )
    .prop_map(|c| c.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn output_does_not_depend_on_the_split(
        stops in proptest::collection::vec(piece(), 0..4),
        parts in proptest::collection::vec((piece(), any::<bool>()), 0..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        // Text made of random pieces, with some stops embedded whole.
        let mut text = String::new();
        for (i, (p, embed)) in parts.iter().enumerate() {
            text.push_str(p);
            if *embed && !stops.is_empty() {
                text.push_str(&stops[i % stops.len()]);
            }
        }
        let boundaries: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
        let mut points: Vec<usize> = cuts.iter().map(|c| boundaries[c.index(boundaries.len())]).collect();
        points.push(0);
        points.push(text.len());
        points.sort_unstable();
        let deltas: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();

        let mut m = StopMatcher::new(&stops).expect("valid stops");
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        let mut out = String::new();
        let mut stopped = false;
        for d in &deltas {
            let (piece, s) = m.push(d);
            out.push_str(&piece);
            prop_assert!(m.held.len() < longest.max(1), "held {:?}", m.held);
            if s {
                stopped = true;
                break;
            }
        }
        out.push_str(&m.flush());
        prop_assert_eq!((out, stopped), expected(&text, &stops));
    }
}
