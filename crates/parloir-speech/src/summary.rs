//! Transcripts and summaries: the final segments a meeting's speech plane wrote (one JSON line
//! each, with the speaker's identity and real name), exported as WebVTT and Markdown, and an
//! extractive summary that needs no external service: talk time per speaker, key sentences,
//! decisions and action items found by cue words in French and English.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One final segment of a transcript (a line of its JSONL file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub room: String,
    #[serde(default)]
    pub room_sid: String,
    pub identity: String,
    pub name: String,
    pub track: String,
    pub segment: String,
    /// Unix milliseconds.
    pub start_ms: u64,
    pub end_ms: u64,
    pub language: String,
    pub text: String,
    /// Which voice of the track said it (from 1), when voices were told apart; 0 when not.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub voice: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Each segment's speaker as the exports name them: the display name, and, on a track where
/// several voices were heard (a shared room microphone), "name, voice N".
pub fn speaker_labels(segments: &[Segment]) -> Vec<String> {
    let shared: std::collections::HashSet<&str> = segments
        .iter()
        .filter(|s| s.voice > 1)
        .map(|s| s.track.as_str())
        .collect();
    segments
        .iter()
        .map(|s| {
            if s.voice > 0 && shared.contains(s.track.as_str()) {
                format!("{}, voice {}", s.speaker(), s.voice)
            } else {
                s.speaker().to_string()
            }
        })
        .collect()
}

impl Segment {
    /// The speaker as people know them: the display name, else the identity.
    pub fn speaker(&self) -> &str {
        if self.name.is_empty() {
            &self.identity
        } else {
            &self.name
        }
    }
}

/// Reads a transcript: its segments in speaking order (by start; the file has them in the
/// order they were transcribed, which differs when one speaker's utterance ends before an
/// earlier speaker's does), and how many lines could not be read.
pub fn read_jsonl(path: &Path) -> std::io::Result<(Vec<Segment>, usize)> {
    let text = std::fs::read_to_string(path)?;
    let mut segments = Vec::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Segment>(line) {
            Ok(s) => segments.push(s),
            Err(_) => bad += 1,
        }
    }
    segments.sort_by_key(|s| s.start_ms);
    Ok((segments, bad))
}

/// `HH:MM:SS.mmm` of a duration in milliseconds.
pub fn clock(ms: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn escape_vtt(text: &str) -> String {
    text.replace("-->", "→")
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// WebVTT, times from the first segment's start, each cue with its speaker as a voice span.
pub fn to_webvtt(segments: &[Segment]) -> String {
    let origin = segments.iter().map(|s| s.start_ms).min().unwrap_or(0);
    let labels = speaker_labels(segments);
    let mut out = String::from("WEBVTT\n");
    for (i, s) in segments.iter().enumerate() {
        let end = s.end_ms.max(s.start_ms + 1);
        out.push_str(&format!(
            "\n{}\n{} --> {}\n<v {}>{}\n",
            i + 1,
            clock(s.start_ms - origin),
            clock(end - origin),
            escape_vtt(&labels[i]),
            escape_vtt(s.text.trim())
        ));
    }
    out
}

/// Whether the meeting was mostly in French (by speech time): headings follow it.
fn french(segments: &[Segment]) -> bool {
    let (mut fr, mut other) = (0u64, 0u64);
    for s in segments {
        let d = s.end_ms.saturating_sub(s.start_ms);
        if s.language == "fr" {
            fr += d
        } else {
            other += d
        }
    }
    fr > other
}

/// The transcript as Markdown: each segment under its speaker's name with its time.
pub fn to_markdown(segments: &[Segment]) -> String {
    let origin = segments.iter().map(|s| s.start_ms).min().unwrap_or(0);
    let fr = french(segments);
    let room = segments.first().map_or("", |s| s.room.as_str());
    let mut out = format!(
        "# {} — {}\n\n",
        if fr { "Transcription" } else { "Transcript" },
        room
    );
    let labels = speaker_labels(segments);
    let mut last: Option<&str> = None;
    for (s, who) in segments.iter().zip(&labels) {
        let who = who.as_str();
        if last != Some(who) {
            out.push_str(&format!(
                "**{}** ({})\n",
                md(who),
                &clock(s.start_ms - origin)[..8]
            ));
            last = Some(who);
        }
        out.push_str(&format!("{}\n\n", md(s.text.trim())));
    }
    out
}

/// Markdown-inert text: characters Markdown would read as markup are escaped.
fn md(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '*' | '_' | '`' | '[' | ']' | '<' | '>' | '#' | '|' | '\\'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Time one person spoke.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TalkTime {
    pub name: String,
    pub identity: String,
    pub ms: u64,
    /// Share of all speech, 0..1.
    pub share: f64,
}

/// A sentence picked for the summary, with who said it and when (unix ms).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub name: String,
    pub at_ms: u64,
    pub text: String,
}

/// A meeting's summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub room: String,
    pub room_sid: String,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub talk_time: Vec<TalkTime>,
    pub key_points: Vec<Point>,
    pub decisions: Vec<Point>,
    pub actions: Vec<Point>,
    /// "extractive", or the model that wrote `text`.
    pub source: String,
    /// A summary written by a language model, when one was configured and answered.
    pub text: Option<String>,
    /// Why the language model's summary is missing, when one was configured.
    pub fallback_reason: Option<String>,
}

/// Cue words (lower case; whole words, or word starts where they end with `*`) of a decision.
const DECISION_CUES: &[&str] = &[
    "we decided",
    "decided",
    "decision",
    "we agreed",
    "agreed",
    "we agree",
    "approved",
    "let's go with",
    "we will go with",
    "décid*",
    "décision",
    "convenu",
    "d'accord pour",
    "validé",
    "approuvé",
    "on part sur",
    "nous retenons",
    "adopté",
];
/// Cue words of an action item (someone will do something).
const ACTION_CUES: &[&str] = &[
    "will send",
    "will prepare",
    "will write",
    "will call",
    "will check",
    "will share",
    "will organise",
    "will organize",
    "will present",
    "will review",
    "will publish",
    "i'll",
    "we'll",
    "need to",
    "needs to",
    "must",
    "has to",
    "have to",
    "action item",
    "to do",
    "by friday",
    "by monday",
    "before the end",
    "enverra",
    "enverrai",
    "va envoyer",
    "vais envoyer",
    "va préparer",
    "prépare*",
    "préparera",
    "doit",
    "doivent",
    "devons",
    "devez",
    "il faut",
    "à faire",
    "se charge",
    "s'occupe",
    "avant vendredi",
    "avant lundi",
    "avant la fin",
];
const STOPWORDS: &[&str] = &[
    "this", "that", "with", "from", "have", "will", "your", "they", "their", "there", "what",
    "when", "which", "about", "would", "could", "should", "these", "those", "been", "were", "very",
    "just", "also", "then", "than", "into", "more", "some", "here", "everyone", "thank", "thanks",
    "okay", "yeah", "dans", "pour", "avec", "nous", "vous", "sont", "mais", "plus", "tout", "tous",
    "cette", "comme", "elle", "leur", "leurs", "être", "avoir", "fait", "faire", "bien", "alors",
    "donc", "aussi", "merci", "bonjour", "voilà", "était", "sera",
];

fn has_cue(sentence: &str, cues: &[&str]) -> bool {
    let lower = sentence.to_lowercase();
    let letter = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    cues.iter().any(|cue| {
        let (word, prefix) = match cue.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (*cue, false),
        };
        lower.match_indices(word).any(|(i, _)| {
            !letter(lower[..i].chars().next_back())
                && (prefix || !letter(lower[i + word.len()..].chars().next()))
        })
    })
}

/// Sentences of a segment's text.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if matches!(c, '.' | '!' | '?') {
            let s = cur.trim().to_string();
            if s.chars().filter(|c| c.is_alphanumeric()).count() > 1 {
                out.push(s);
            }
            cur.clear();
        }
    }
    let s = cur.trim().to_string();
    if s.chars().filter(|c| c.is_alphanumeric()).count() > 1 {
        out.push(s);
    }
    out
}

fn content_words(sentence: &str) -> Vec<String> {
    sentence
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| w.chars().count() >= 4 && !STOPWORDS.contains(w))
        .map(str::to_string)
        .collect()
}

/// The extractive summary of a transcript.
pub fn extractive(segments: &[Segment]) -> Summary {
    let labels = speaker_labels(segments);
    let mut talk: HashMap<(&str, &str), u64> = HashMap::new();
    for (s, label) in segments.iter().zip(&labels) {
        *talk
            .entry((label.as_str(), s.identity.as_str()))
            .or_default() += s.end_ms.saturating_sub(s.start_ms);
    }
    let total: u64 = talk.values().sum();
    let mut talk_time: Vec<TalkTime> = talk
        .into_iter()
        .map(|((name, identity), ms)| TalkTime {
            name: name.to_string(),
            identity: identity.to_string(),
            ms,
            share: if total > 0 {
                ms as f64 / total as f64
            } else {
                0.0
            },
        })
        .collect();
    talk_time.sort_by(|a, b| b.ms.cmp(&a.ms).then(a.name.cmp(&b.name)));

    let all: Vec<Point> = segments
        .iter()
        .zip(&labels)
        .flat_map(|(s, label)| {
            sentences(&s.text).into_iter().map(|text| Point {
                name: label.clone(),
                at_ms: s.start_ms,
                text,
            })
        })
        .collect();
    let decisions: Vec<Point> = all
        .iter()
        .filter(|p| has_cue(&p.text, DECISION_CUES))
        .cloned()
        .collect();
    let actions: Vec<Point> = all
        .iter()
        .filter(|p| has_cue(&p.text, ACTION_CUES) && !has_cue(&p.text, DECISION_CUES))
        .cloned()
        .collect();
    // Key sentences: those whose content words the meeting repeats most.
    let mut frequency: HashMap<String, usize> = HashMap::new();
    for p in &all {
        for w in content_words(&p.text) {
            *frequency.entry(w).or_default() += 1;
        }
    }
    let mut scored: Vec<(f64, usize)> = all
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let words = content_words(&p.text);
            let score: f64 = words.iter().map(|w| (1.0 + frequency[w] as f64).ln()).sum();
            (score / (words.len().max(1) as f64).sqrt(), i)
        })
        .filter(|(score, _)| *score > 0.0)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let keep = all.len().div_ceil(3).clamp(1, 7);
    let mut picked: Vec<usize> = scored.iter().take(keep).map(|&(_, i)| i).collect();
    picked.sort_unstable();
    Summary {
        room: segments.first().map(|s| s.room.clone()).unwrap_or_default(),
        room_sid: segments
            .first()
            .map(|s| s.room_sid.clone())
            .unwrap_or_default(),
        started_ms: segments.iter().map(|s| s.start_ms).min().unwrap_or(0),
        ended_ms: segments.iter().map(|s| s.end_ms).max().unwrap_or(0),
        talk_time,
        key_points: picked.into_iter().map(|i| all[i].clone()).collect(),
        decisions,
        actions,
        source: "extractive".to_string(),
        text: None,
        fallback_reason: None,
    }
}

impl Summary {
    /// The summary as Markdown, headings in the meeting's main language.
    pub fn to_markdown(&self, segments: &[Segment]) -> String {
        let fr = french(segments);
        let h = |en: &'static str, fr_: &'static str| if fr { fr_ } else { en };
        let minutes = self.ended_ms.saturating_sub(self.started_ms) as f64 / 60_000.0;
        let mut out = format!(
            "# {} — {}\n\n{}: {:.0} min · {} {}\n\n",
            h("Meeting summary", "Compte rendu"),
            md(&self.room),
            h("Speech over", "Parole sur"),
            minutes.max(1.0),
            self.talk_time.len(),
            if self.talk_time.len() == 1 {
                h("speaker", "intervenant")
            } else {
                h("speakers", "intervenants")
            }
        );
        if let Some(text) = &self.text {
            out.push_str(&format!("{}\n\n", text.trim()));
        }
        out.push_str(&format!("## {}\n\n", h("Talk time", "Temps de parole")));
        for t in &self.talk_time {
            out.push_str(&format!(
                "- {}: {} s ({:.0} %)\n",
                md(&t.name),
                t.ms / 1000,
                t.share * 100.0
            ));
        }
        let list = |title: &str, points: &[Point], out: &mut String| {
            if points.is_empty() {
                return;
            }
            out.push_str(&format!("\n## {title}\n\n"));
            for p in points {
                out.push_str(&format!("- **{}**: {}\n", md(&p.name), md(&p.text)));
            }
        };
        if self.text.is_none() {
            list(h("Key points", "Points clés"), &self.key_points, &mut out);
        }
        list(h("Decisions", "Décisions"), &self.decisions, &mut out);
        list(h("Action items", "Actions"), &self.actions, &mut out);
        if let Some(reason) = &self.fallback_reason {
            out.push_str(&format!(
                "\n_{}: {}_\n",
                h(
                    "Extractive summary; the language model failed",
                    "Résumé extractif ; le modèle de langue a échoué"
                ),
                md(reason)
            ));
        }
        out
    }
}

/// The prompt for a chat model: the transcript with names, and what to write.
pub fn llm_messages(segments: &[Segment]) -> serde_json::Value {
    let fr = french(segments);
    let mut transcript = String::new();
    for (s, label) in segments.iter().zip(speaker_labels(segments)) {
        transcript.push_str(&format!("{label}: {}\n", s.text.trim()));
    }
    let instruction = if fr {
        "Tu rédiges le compte rendu d'une réunion à partir de sa transcription. Écris en français, \
         en Markdown, sans inventer : un résumé en quelques phrases, puis les décisions, puis les \
         actions avec la personne qui s'en charge."
    } else {
        "You write the minutes of a meeting from its transcript. Write in English, in Markdown, \
         inventing nothing: a summary in a few sentences, then the decisions, then the action \
         items with who will do each."
    };
    serde_json::json!([
        { "role": "system", "content": instruction },
        { "role": "user", "content": transcript },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, start_s: u64, end_s: u64, lang: &str, text: &str) -> Segment {
        Segment {
            room: "weekly".into(),
            room_sid: "RM_x".into(),
            identity: name.to_lowercase(),
            name: name.into(),
            track: "TR_1".into(),
            segment: "SG_1".into(),
            start_ms: 1_000_000 + start_s * 1000,
            end_ms: 1_000_000 + end_s * 1000,
            language: lang.into(),
            text: text.into(),
            voice: 0,
        }
    }

    fn meeting() -> Vec<Segment> {
        vec![
            seg(
                "Alice",
                0,
                10,
                "en",
                "Good morning everyone. Today we review the budget for next year.",
            ),
            seg(
                "Bob",
                12,
                20,
                "en",
                "The budget is higher because of the new office. We agreed to open the office in Lyon.",
            ),
            seg(
                "Alice",
                21,
                30,
                "en",
                "Paul will send the budget report on Friday. Thank you all.",
            ),
        ]
    }

    #[test]
    fn talk_time_decisions_and_actions() {
        let s = extractive(&meeting());
        assert_eq!(s.talk_time[0].name, "Alice");
        assert_eq!(s.talk_time[0].ms, 19_000);
        assert_eq!(s.talk_time[1].ms, 8_000);
        assert!((s.talk_time.iter().map(|t| t.share).sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(s.decisions.len(), 1);
        assert!(s.decisions[0].text.starts_with("We agreed") && s.decisions[0].name == "Bob");
        assert_eq!(s.actions.len(), 1);
        assert!(s.actions[0].text.contains("Paul will send"));
        assert!(!s.key_points.is_empty());
        assert!(s.key_points.iter().any(|p| p.text.contains("budget")));
        assert_eq!((s.started_ms, s.ended_ms), (1_000_000, 1_030_000));
        let md = s.to_markdown(&meeting());
        assert!(md.starts_with("# Meeting summary — weekly"));
        assert!(md.contains("## Decisions") && md.contains("## Action items"));
        assert!(md.contains("- Alice: 19 s (70 %)"));
    }

    #[test]
    fn french_cues_and_headings() {
        let segs = vec![
            seg(
                "Élise",
                0,
                10,
                "fr",
                "Nous avons décidé de reporter le projet. Marc enverra le compte rendu lundi.",
            ),
            seg("Marc", 10, 14, "fr", "D'accord, je m'en occupe."),
        ];
        let s = extractive(&segs);
        assert_eq!(s.decisions.len(), 1);
        assert_eq!(s.actions.len(), 1);
        assert!(s.actions[0].text.starts_with("Marc enverra"));
        let md = s.to_markdown(&segs);
        assert!(
            md.starts_with("# Compte rendu")
                && md.contains("## Décisions")
                && md.contains("## Actions")
        );
        // Cue words match at word starts only: "must" is not in "mustard".
        assert!(!has_cue("Pass the mustard.", ACTION_CUES));
    }

    #[test]
    fn voices_of_a_shared_microphone_are_named() {
        let mut segs = meeting();
        for s in &mut segs {
            s.name = "Room 3".into();
            s.identity = "room-3".into();
        }
        // One voice only: just the name.
        segs[0].voice = 1;
        assert_eq!(speaker_labels(&segs)[0], "Room 3");
        segs[1].voice = 2;
        segs[2].voice = 1;
        assert_eq!(
            speaker_labels(&segs),
            ["Room 3, voice 1", "Room 3, voice 2", "Room 3, voice 1"]
        );
        assert!(to_webvtt(&segs).contains("<v Room 3, voice 2>The budget"));
        let s = extractive(&segs);
        assert_eq!(s.talk_time.len(), 2);
        assert_eq!(s.talk_time[0].name, "Room 3, voice 1");
        // Written without the field when no voices were told apart, read back with it.
        let line = serde_json::to_string(&meeting()[0]).unwrap();
        assert!(!line.contains("voice"));
        let back: Segment =
            serde_json::from_str(&serde_json::to_string(&segs[1]).unwrap()).unwrap();
        assert_eq!(back.voice, 2);
    }

    #[test]
    fn exports() {
        let vtt = to_webvtt(&meeting());
        assert!(
            vtt.starts_with("WEBVTT\n\n1\n00:00:00.000 --> 00:00:10.000\n<v Alice>Good morning")
        );
        assert!(vtt.contains("\n3\n00:00:21.000 --> 00:00:30.000\n<v Alice>Paul"));
        let mut tricky = meeting();
        tricky[0].name = "A <b> & --> c".into();
        tricky[0].text = "x < y".into();
        let vtt = to_webvtt(&tricky);
        assert!(vtt.contains("<v A &lt;b&gt; &amp; → c>x &lt; y"));
        let md = to_markdown(&meeting());
        assert!(md.starts_with("# Transcript — weekly"));
        assert!(md.contains("**Alice** (00:00:00)\nGood morning"));
        assert!(md.contains("**Bob** (00:00:12)"));
        assert!(to_webvtt(&[]).starts_with("WEBVTT"));
        let empty = extractive(&[]);
        assert!(empty.talk_time.is_empty() && empty.key_points.is_empty());
    }

    #[test]
    fn jsonl_is_read_in_speaking_order_and_bad_lines_are_counted_not_fatal() {
        let dir = std::env::temp_dir().join(format!("parloir-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        let mut text = String::new();
        // Written as transcribed: Bob's short turn ended before Alice's first one did.
        let mut written = meeting();
        written.swap(0, 1);
        for s in written {
            text.push_str(&serde_json::to_string(&s).unwrap());
            text.push('\n');
        }
        text.push_str("{\"broken\n");
        std::fs::write(&path, text).unwrap();
        let (segs, bad) = read_jsonl(&path).unwrap();
        assert_eq!((segs.len(), bad), (3, 1));
        assert_eq!(segs, meeting());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
