//! Labeled-text tables for classification: rows read and checked (errors naming the line), class
//! labels, and the SMS Spam Collection balanced and split to the book's sizes.
use scratchllm_testutil::shared;
use scratchllm_train::classify::{self, Column, Example, TableFormat};
use std::path::Path;

fn examples(path: &Path, text: &str, format: &TableFormat) -> Result<Vec<Example>, String> {
    std::fs::write(path, text).unwrap();
    classify::read_examples(path, format).map_err(|e| e.to_string())
}

#[test]
fn tables_are_read_and_bad_rows_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.tsv");
    let tsv = TableFormat::tsv();
    let ok = examples(&p, "ham\thello there\r\nspam\tWIN\tnow\n\nham\tbye\n", &tsv).unwrap();
    assert_eq!(ok.len(), 3);
    assert_eq!(
        ok[1].text, "WIN\tnow",
        "tabs inside the last column belong to the text"
    );
    assert_eq!(ok[2].line, 4);
    let e = examples(&p, "ham\tfine\nspam no tab here\n", &tsv).unwrap_err();
    assert!(
        e.contains("line 2") && e.contains("1 field(s), expected 2"),
        "{e}"
    );
    let e = examples(&p, "ham\tfine\nspam\t   \n", &tsv).unwrap_err();
    assert!(e.contains("line 2: the text is empty"), "{e}");
    let e = examples(&p, "ham\tfine\n\tno label\n", &tsv).unwrap_err();
    assert!(e.contains("line 2: the label is empty"), "{e}");
    let e = examples(&p, "\n\n", &tsv).unwrap_err();
    assert!(e.contains("no labeled texts"), "{e}");

    let csv = TableFormat {
        csv: true,
        header: true,
        label_column: Column::Name("label".into()),
        text_column: Column::Name("text".into()),
    };
    let p = dir.path().join("d.csv");
    let ok = examples(
        &p,
        "id,text,label\n1,\"Hello, world\",pos\n2,\"two\nlines\",neg\n",
        &csv,
    )
    .unwrap();
    assert_eq!(ok[0].text, "Hello, world");
    assert_eq!(ok[1].text, "two\nlines");
    assert_eq!(ok[1].label, "neg");
    let e = examples(&p, "id,text,label\n1,hi,pos\n2,short\n", &csv).unwrap_err();
    assert!(e.contains("line 3") && e.contains("expected 3"), "{e}");
    let e = examples(&p, "id,body,label\n1,hi,pos\n", &csv).unwrap_err();
    assert!(
        e.contains("no column \"text\"") && e.contains("id, body, label"),
        "{e}"
    );

    let ex = vec![
        Example {
            label: "10".into(),
            text: "a".into(),
            line: 1,
        },
        Example {
            label: "9".into(),
            text: "b".into(),
            line: 2,
        },
    ];
    assert_eq!(classify::class_labels(&ex, None, &p).unwrap(), ["9", "10"]);
    let e = classify::class_labels(&ex, Some(&["9".into(), "8".into()]), &p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 1: unknown label \"10\"") && e.contains("9, 8"),
        "{e}"
    );
}

#[test]
fn the_sms_collection_balances_and_splits_as_the_book() {
    let Some(path) = shared("data/sms-spam-collection.tsv") else {
        return;
    };
    let all = classify::read_examples(&path, &TableFormat::tsv()).unwrap();
    // Read as plain TSV: 5,574 messages. (pandas, which the book uses, treats quotes as CSV
    // quoting and merges two messages into others: 5,572, of which 4,825 ham.)
    assert_eq!(all.len(), 5574);
    let labels = classify::class_labels(&all, None, &path).unwrap();
    assert_eq!(labels, ["ham", "spam"]);
    assert_eq!(all.iter().filter(|e| e.label == "spam").count(), 747);
    let balanced = classify::balance(all, &labels, 123);
    assert_eq!(balanced.len(), 1494);
    assert_eq!(balanced.iter().filter(|e| e.label == "ham").count(), 747);
    let (train, val, test) = classify::split(balanced, 0.7, 0.1, 123);
    assert_eq!((train.len(), val.len(), test.len()), (1045, 149, 300));
}
