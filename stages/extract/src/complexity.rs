//! The complexity check: what a page would cost the engines, measured before they run, so that
//! a page built to be expensive fails alone, quickly, with "page too complex".
//!
//! The three engines each parse the page with html5ever (three versions, one algorithm) and then
//! walk the tree, some of them once per node along its ancestors; a page deep enough, or
//! misnested so that the parser's own bookkeeping grows with every tag, costs them time that
//! grows faster than its size (minutes for a 1 MB page). So the page is parsed once here, with
//! the same algorithm, into a tree that holds nothing but its shape, and refused when one of
//! [`LIMITS`] is passed:
//!
//! - attributes in one tag, counted by a scan before the parse (html5ever's tokenizer compares
//!   each attribute with every earlier one of its tag, to drop duplicates);
//! - the tree builder's work: each element it looks at on its stack of open elements (scope
//!   checks, misnested end tags, the adoption agency algorithm), each child it moves; the parse
//!   stops as soon as the budget is spent;
//! - nesting depth (the engines recurse and walk ancestors);
//! - nodes (elements, text and comments);
//! - the sum of every node's depth, what walking each node's ancestors costs.
//!
//! Normal pages are nowhere near any limit (see [`LIMITS`]); the check is one parse more beside
//! the engines' several, and its tree is a few words a node.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::{
    BufferQueue, TagToken, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};
use html5ever::tree_builder::{
    ElemName, ElementFlags, NodeOrText, QuirksMode, TreeBuilder, TreeBuilderOpts, TreeSink,
};
use html5ever::{Attribute, LocalName, Namespace, QualName, TokenizerResult};

/// What a page may cost; past any of these it is refused. All but `depth` are for a page of up
/// to 1 MB and grow in proportion above that, so that a large page is held to what its size
/// warrants and a small one gains nothing by being small.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Pairs of attributes the tokenizer compares: the sum over tags of their attribute count
    /// squared (one tag of 3,000, or 1,000 tags of 100).
    pub(crate) attribute_pairs: u64,
    /// Elements nested in one another.
    pub(crate) depth: u32,
    /// Nodes of the tree: elements, text runs, comments.
    pub(crate) nodes: u64,
    /// Steps of the tree builder: elements looked at on its stack, children moved, nodes made.
    pub(crate) parser_work: u64,
    /// The sum of every node's depth.
    pub(crate) depth_sum: u64,
}

/// The limits the stage applies. Chosen from measurements: the 72 pages of the quality
/// benchmark stay well under each (at most 0.6 million attribute pairs, depth 28, and a MB's
/// worth of 31,000 nodes, 0.3 million parser steps and a depth sum of 0.3 million), and the
/// pages of `examples/hostile.rs` that pass take about a second or less each in release.
pub(crate) const LIMITS: Limits = Limits {
    attribute_pairs: 10_000_000,
    depth: 512,
    nodes: 150_000,
    parser_work: 5_000_000,
    depth_sum: 1_000_000,
};

const MB: u64 = 1_000_000;

impl Limits {
    /// The limits for a page of `bytes`.
    fn for_page(&self, bytes: usize) -> Self {
        let mbs = |limit: u64| limit.saturating_mul((bytes as u64).max(MB)) / MB;
        Self {
            attribute_pairs: mbs(self.attribute_pairs),
            depth: self.depth,
            nodes: mbs(self.nodes),
            parser_work: mbs(self.parser_work),
            depth_sum: mbs(self.depth_sum),
        }
    }
}

/// Why a page was refused: which limit it passed (the limit for its size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TooComplex {
    AttributePairs(u64),
    Depth(u32),
    Nodes(u64),
    ParserWork(u64),
    DepthSum(u64),
}

impl fmt::Display for TooComplex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("page too complex: ")?;
        match self {
            Self::AttributePairs(limit) => write!(
                f,
                "tags with too many attributes (more than {limit} pairs of attributes to compare)"
            ),
            Self::Depth(limit) => write!(f, "elements nested more than {limit} deep"),
            Self::Nodes(limit) => write!(f, "more than {limit} nodes"),
            Self::ParserWork(limit) => write!(
                f,
                "more than {limit} steps to build the tree (tags misnested or left open)"
            ),
            Self::DepthSum(limit) => write!(
                f,
                "the depths of its nodes add up to more than {limit} (many nodes nested deep)"
            ),
        }
    }
}

/// The shape of a page that passed: what the limits were held against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) attribute_pairs: u64,
    pub(crate) depth: u32,
    pub(crate) nodes: u64,
    pub(crate) parser_work: u64,
    pub(crate) depth_sum: u64,
    /// The sum over elements of their children squared: what the slow engine's work grows
    /// with.
    pub(crate) sibling_work: u64,
}

/// Measure `html` against `limits` (scaled to its size): its shape, or the first limit it
/// passes.
pub(crate) fn check(html: &str, limits: &Limits) -> Result<Shape, TooComplex> {
    let limits = limits.for_page(html.len());
    let attribute_pairs = attribute_pairs(html);
    if attribute_pairs > limits.attribute_pairs {
        return Err(TooComplex::AttributePairs(limits.attribute_pairs));
    }
    let sink = ShapeSink::new(limits);
    let builder = TreeBuilder::new(sink, TreeBuilderOpts::default());
    let tokenizer = Tokenizer::new(Gate(builder), TokenizerOpts::default());
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    let sink = &tokenizer.sink.0.sink;
    // The tokenizer pauses after each `</script>` and `<meta charset>`, and after any tag once
    // the gate has seen a limit passed.
    while !matches!(tokenizer.feed(&input), TokenizerResult::Done) {
        if sink.over.get().is_some() {
            break;
        }
    }
    if sink.over.get().is_none() {
        tokenizer.end();
    }
    if let Some(over) = sink.over.get() {
        return Err(over);
    }
    let (depth, depth_sum) = sink.depths();
    if depth > limits.depth {
        return Err(TooComplex::Depth(limits.depth));
    }
    if depth_sum > limits.depth_sum {
        return Err(TooComplex::DepthSum(limits.depth_sum));
    }
    let nodes = sink.nodes.borrow();
    let sibling_work = nodes.iter().map(|n| u64::from(n.children).pow(2)).sum();
    Ok(Shape {
        attribute_pairs,
        depth,
        nodes: nodes.len() as u64,
        parser_work: sink.work.get(),
        depth_sum,
        sibling_work,
    })
}

/// The sum over the tags of `html` of their attribute count squared: the pairs html5ever's
/// tokenizer compares (each attribute with every earlier one of its tag, to drop duplicates).
/// Attributes are counted the way the tokenizer reads a tag (a name starts after the tag's
/// name, after white space or `/`, or right after a quoted value; quoted values are skipped).
/// It may count more than the tokenizer (it reads `<` in comments and scripts as tags, as the
/// tokenizer does inside `<svg>`) but not fewer, which is what bounds the tokenizer's work.
fn attribute_pairs(html: &str) -> u64 {
    let bytes = html.as_bytes();
    let mut pairs = 0u64;
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'<') {
        i += off + 1;
        if !bytes.get(i).is_some_and(u8::is_ascii_alphabetic) {
            continue;
        }
        // The tag's name.
        while i < bytes.len() && !is_tag_space(bytes[i]) && bytes[i] != b'/' && bytes[i] != b'>' {
            i += 1;
        }
        let mut count = 0u64;
        // Before a name, in one, or after one (where `=` still starts its value).
        let (mut in_name, mut after_name) = (false, false);
        while i < bytes.len() {
            match bytes[i] {
                b'>' => break,
                b'/' => (in_name, after_name) = (false, false),
                b if is_tag_space(b) => {
                    after_name |= in_name;
                    in_name = false;
                }
                b'=' if in_name || after_name => {
                    // The value: white space, then a quoted value whole, or up to white space.
                    i += 1;
                    while i < bytes.len() && is_tag_space(bytes[i]) {
                        i += 1;
                    }
                    match bytes.get(i) {
                        Some(&q @ (b'"' | b'\'')) => {
                            let close = bytes[i + 1..].iter().position(|&b| b == q);
                            i = close.map_or(bytes.len(), |c| i + 1 + c);
                        }
                        _ => {
                            while i < bytes.len() && !is_tag_space(bytes[i]) && bytes[i] != b'>' {
                                i += 1;
                            }
                            continue;
                        }
                    }
                    // A name may follow a quoted value directly.
                    (in_name, after_name) = (false, false);
                }
                _ => {
                    if !in_name {
                        count += 1;
                        (in_name, after_name) = (true, false);
                    }
                }
            }
            i += 1;
        }
        pairs = pairs.saturating_add(count * count);
    }
    pairs
}

fn is_tag_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0c' | b'\r')
}

/// The tokenizer's sink: the tree builder, stopped once the shape sink passed a limit (a tag
/// pauses the tokenizer as a script does; other tokens are dropped until then).
struct Gate(TreeBuilder<u32, ShapeSink>);

impl TokenSink for Gate {
    type Handle = u32;

    fn process_token(&self, token: Token, line_number: u64) -> TokenSinkResult<u32> {
        if self.0.sink.over.get().is_some() {
            return match token {
                TagToken(_) => TokenSinkResult::Script(DOCUMENT),
                _ => TokenSinkResult::Continue,
            };
        }
        self.0.process_token(token, line_number)
    }

    fn end(&self) {
        self.0.end();
    }

    fn adjusted_current_node_present_but_not_in_html_namespace(&self) -> bool {
        self.0
            .adjusted_current_node_present_but_not_in_html_namespace()
    }
}

const DOCUMENT: u32 = 0;
const NONE: u32 = u32::MAX;

/// One node of the shape tree: its links and its name.
struct Node {
    parent: u32,
    first_child: u32,
    last_child: u32,
    prev: u32,
    next: u32,
    children: u32,
    attributes: u32,
    /// The depth it had when appended (later moves are not followed: an estimate that stops a
    /// parse early; the exact depths are counted at the end).
    depth: u32,
    kind: Kind,
}

enum Kind {
    /// The document, or a template's contents.
    Root,
    Element(QualName),
    Text,
    Other,
}

/// A tree sink that keeps the tree's shape and nothing else, and counts the builder's work.
struct ShapeSink {
    limits: Limits,
    nodes: RefCell<Vec<Node>>,
    /// Template element → its contents (the contents' node).
    templates: RefCell<Vec<(u32, u32)>>,
    work: Cell<u64>,
    over: Cell<Option<TooComplex>>,
}

/// An element's name, owned (the builder may ask for names while it changes the tree).
#[derive(Debug)]
struct Name(QualName);

impl ElemName for Name {
    fn ns(&self) -> &Namespace {
        &self.0.ns
    }

    fn local_name(&self) -> &LocalName {
        &self.0.local
    }
}

impl ShapeSink {
    fn new(limits: Limits) -> Self {
        let sink = Self {
            limits,
            nodes: RefCell::new(Vec::new()),
            templates: RefCell::new(Vec::new()),
            work: Cell::new(0),
            over: Cell::new(None),
        };
        sink.add(Kind::Root);
        sink
    }

    fn spend(&self, steps: u64) {
        let work = self.work.get() + steps;
        self.work.set(work);
        if work > self.limits.parser_work {
            self.stop(TooComplex::ParserWork(self.limits.parser_work));
        }
    }

    fn stop(&self, over: TooComplex) {
        if self.over.get().is_none() {
            self.over.set(Some(over));
        }
    }

    fn add(&self, kind: Kind) -> u32 {
        self.spend(1);
        let mut nodes = self.nodes.borrow_mut();
        if nodes.len() as u64 >= self.limits.nodes {
            self.stop(TooComplex::Nodes(self.limits.nodes));
        }
        nodes.push(Node {
            parent: NONE,
            first_child: NONE,
            last_child: NONE,
            prev: NONE,
            next: NONE,
            children: 0,
            attributes: 0,
            depth: 0,
            kind,
        });
        u32::try_from(nodes.len() - 1).expect("fewer nodes than the limit")
    }

    /// `child` (detached) as the last child of `parent`.
    fn link_last(&self, parent: u32, child: u32) {
        let mut nodes = self.nodes.borrow_mut();
        let depth = nodes[parent as usize].depth + 1;
        let last = nodes[parent as usize].last_child;
        {
            let c = &mut nodes[child as usize];
            c.parent = parent;
            c.prev = last;
            c.next = NONE;
            c.depth = depth;
        }
        if last == NONE {
            nodes[parent as usize].first_child = child;
        } else {
            nodes[last as usize].next = child;
        }
        let p = &mut nodes[parent as usize];
        p.last_child = child;
        p.children += 1;
        drop(nodes);
        if depth > self.limits.depth {
            self.stop(TooComplex::Depth(self.limits.depth));
        }
    }

    /// `child` (detached) as the sibling before `sibling`.
    fn link_before(&self, sibling: u32, child: u32) {
        let mut nodes = self.nodes.borrow_mut();
        let parent = nodes[sibling as usize].parent;
        if parent == NONE {
            return;
        }
        let prev = nodes[sibling as usize].prev;
        let depth = nodes[parent as usize].depth + 1;
        {
            let c = &mut nodes[child as usize];
            c.parent = parent;
            c.prev = prev;
            c.next = sibling;
            c.depth = depth;
        }
        nodes[sibling as usize].prev = child;
        if prev == NONE {
            nodes[parent as usize].first_child = child;
        } else {
            nodes[prev as usize].next = child;
        }
        nodes[parent as usize].children += 1;
        // A DOM finds `sibling` among its parent's children by walking them.
        let walked = u64::from(nodes[parent as usize].children);
        drop(nodes);
        self.spend(walked);
    }

    /// `node` out of its parent's children, counting the walk a DOM makes to find it.
    fn unlink(&self, node: u32) {
        let walked = self.detach(node);
        self.spend(walked);
    }

    /// `node` out of its parent's children; the number of its siblings.
    fn detach(&self, node: u32) -> u64 {
        let mut nodes = self.nodes.borrow_mut();
        let (parent, prev, next) = {
            let n = &nodes[node as usize];
            (n.parent, n.prev, n.next)
        };
        if parent == NONE {
            return 0;
        }
        if prev == NONE {
            nodes[parent as usize].first_child = next;
        } else {
            nodes[prev as usize].next = next;
        }
        if next == NONE {
            nodes[parent as usize].last_child = prev;
        } else {
            nodes[next as usize].prev = prev;
        }
        let p = &mut nodes[parent as usize];
        p.children -= 1;
        let walked = u64::from(p.children);
        let n = &mut nodes[node as usize];
        n.parent = NONE;
        n.prev = NONE;
        n.next = NONE;
        walked
    }

    fn is_text(&self, node: u32) -> bool {
        node != NONE && matches!(self.nodes.borrow()[node as usize].kind, Kind::Text)
    }

    /// The deepest element and the sum of every node's depth, from the parent links (template
    /// contents count as their template's child).
    fn depths(&self) -> (u32, u64) {
        let nodes = self.nodes.borrow();
        let templates = self.templates.borrow();
        let mut host = vec![NONE; nodes.len()];
        for &(template, contents) in templates.iter() {
            host[contents as usize] = template;
        }
        let parent = |i: usize| match nodes[i].parent {
            NONE => host[i],
            p => p,
        };
        let mut depth: Vec<u32> = vec![NONE; nodes.len()];
        let mut path = Vec::new();
        let (mut deepest, mut sum) = (0u32, 0u64);
        for i in 0..nodes.len() {
            let mut at = i;
            while depth[at] == NONE {
                if path.len() > nodes.len() {
                    // Parent links in a loop, which the builder never makes: stop the walk.
                    break;
                }
                path.push(at);
                match parent(at) {
                    NONE => break,
                    p => at = p as usize,
                }
            }
            let mut d = if depth[at] == NONE {
                // A root (the document, or a node left detached).
                path.pop();
                depth[at] = 0;
                0
            } else {
                depth[at]
            };
            while let Some(n) = path.pop() {
                d += 1;
                depth[n] = d;
            }
            let mine = depth[i];
            sum += u64::from(mine);
            if matches!(nodes[i].kind, Kind::Element(_)) {
                deepest = deepest.max(mine);
            }
        }
        (deepest, sum)
    }
}

impl TreeSink for ShapeSink {
    type Handle = u32;
    type Output = ();
    type ElemName<'a> = Name;

    fn finish(self) {}

    fn parse_error(&self, _msg: Cow<'static, str>) {}

    fn get_document(&self) -> u32 {
        DOCUMENT
    }

    fn elem_name<'a>(&'a self, target: &'a u32) -> Name {
        self.spend(1);
        match &self.nodes.borrow()[*target as usize].kind {
            Kind::Element(name) => Name(name.clone()),
            // The builder asks only for elements' names.
            _ => Name(QualName::new(
                None,
                Namespace::from(""),
                LocalName::from(""),
            )),
        }
    }

    fn create_element(&self, name: QualName, attrs: Vec<Attribute>, _: ElementFlags) -> u32 {
        self.spend(attrs.len() as u64);
        let template =
            name.ns == html5ever::ns!(html) && name.local == html5ever::local_name!("template");
        let element = self.add(Kind::Element(name));
        self.nodes.borrow_mut()[element as usize].attributes =
            u32::try_from(attrs.len()).unwrap_or(u32::MAX);
        if template {
            let contents = self.add(Kind::Root);
            self.templates.borrow_mut().push((element, contents));
        }
        element
    }

    fn create_comment(&self, _text: StrTendril) -> u32 {
        self.add(Kind::Other)
    }

    fn create_pi(&self, _target: StrTendril, _data: StrTendril) -> u32 {
        self.add(Kind::Other)
    }

    fn append(&self, parent: &u32, child: NodeOrText<u32>) {
        match child {
            NodeOrText::AppendNode(node) => self.link_last(*parent, node),
            NodeOrText::AppendText(_) => {
                let last = self.nodes.borrow()[*parent as usize].last_child;
                if !self.is_text(last) {
                    let text = self.add(Kind::Text);
                    self.link_last(*parent, text);
                }
            }
        }
    }

    fn append_based_on_parent_node(
        &self,
        element: &u32,
        prev_element: &u32,
        child: NodeOrText<u32>,
    ) {
        if self.nodes.borrow()[*element as usize].parent == NONE {
            self.append(prev_element, child);
        } else {
            self.append_before_sibling(element, child);
        }
    }

    fn append_doctype_to_document(&self, _: StrTendril, _: StrTendril, _: StrTendril) {
        let doctype = self.add(Kind::Other);
        self.link_last(DOCUMENT, doctype);
    }

    fn get_template_contents(&self, target: &u32) -> u32 {
        self.spend(1);
        let templates = self.templates.borrow();
        // Templates are few; a page of many is bounded by the node limit.
        let contents = templates
            .iter()
            .rev()
            .find(|(t, _)| t == target)
            .map_or(*target, |&(_, c)| c);
        drop(templates);
        // Nodes inserted into the contents are as deep as the template's children.
        let mut nodes = self.nodes.borrow_mut();
        let depth = nodes[*target as usize].depth + 1;
        nodes[contents as usize].depth = depth;
        contents
    }

    fn same_node(&self, x: &u32, y: &u32) -> bool {
        x == y
    }

    fn set_quirks_mode(&self, _mode: QuirksMode) {}

    fn append_before_sibling(&self, sibling: &u32, new_node: NodeOrText<u32>) {
        match new_node {
            NodeOrText::AppendNode(node) => {
                self.unlink(node);
                self.link_before(*sibling, node);
            }
            NodeOrText::AppendText(_) => {
                let prev = self.nodes.borrow()[*sibling as usize].prev;
                if !self.is_text(prev) {
                    let text = self.add(Kind::Text);
                    self.link_before(*sibling, text);
                }
            }
        }
    }

    fn add_attrs_if_missing(&self, target: &u32, attrs: Vec<Attribute>) {
        // A DOM compares each new attribute with those the element has (`<html>` and `<body>`
        // tags repeated in the body add theirs to the first).
        let mut nodes = self.nodes.borrow_mut();
        let node = &mut nodes[*target as usize];
        let had = u64::from(node.attributes);
        let new = attrs.len() as u64;
        node.attributes = node
            .attributes
            .saturating_add(u32::try_from(new).unwrap_or(u32::MAX));
        drop(nodes);
        self.spend((had + 1) * new);
    }

    fn remove_from_parent(&self, target: &u32) {
        self.unlink(*target);
    }

    fn reparent_children(&self, node: &u32, new_parent: &u32) {
        loop {
            let child = self.nodes.borrow()[*node as usize].first_child;
            if child == NONE || self.over.get().is_some() {
                break;
            }
            self.detach(child);
            self.link_last(*new_parent, child);
            self.spend(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(head: &str, unit: &str, n: usize, tail: &str) -> String {
        format!("<html><body>{head}{}{tail}</body></html>", unit.repeat(n))
    }

    const STORY: &str = "<p>The harbour reopened on Friday after four days of repairs.</p>";

    #[test]
    fn hostile_shapes_are_refused_by_the_limit_they_pass() {
        let deep_block = format!("{}x{}", "<div>".repeat(1_999), "</div>".repeat(1_999));
        let depth = TooComplex::Depth(LIMITS.depth);
        let cases: Vec<(&str, String, TooComplex)> = vec![
            // HTML ignores the slash: each `<div/>` opens a div inside the last.
            ("<div/> x 5,000", page("", "<div/>", 5_000, STORY), depth),
            ("<div/> x 20,000", page("", "<div/>", 20_000, STORY), depth),
            // A stray end tag closes nothing.
            (
                "<div></x> x 20,000",
                page("", "<div></x>", 20_000, STORY),
                depth,
            ),
            ("40 blocks 1,999 deep", page("", &deep_block, 40, ""), depth),
            ("<b> x 50,000", page("", "<b>", 50_000, STORY), depth),
            (
                "deep table",
                page("", "<table><tr><td>", 2_000, STORY),
                depth,
            ),
            ("deep list", page("", "<ul><li>", 2_000, STORY), depth),
            (
                "nested templates",
                page("", "<template>", 2_000, STORY),
                depth,
            ),
            ("nested svg", page("", "<svg>", 2_000, STORY), depth),
            (
                "many siblings",
                page("", "<div>x</div>", 100_000, ""),
                TooComplex::Nodes(LIMITS.nodes * 12 / 10),
            ),
            (
                "many <p> in one div",
                page("<div>", "<p>word word", 100_000, ""),
                TooComplex::Nodes(LIMITS.nodes * 12 / 10),
            ),
            (
                "misnested <a> and <p>",
                page("", "<a><p>x", 130_000, ""),
                TooComplex::Nodes(LIMITS.nodes),
            ),
            (
                "text fostered out of a table",
                page("<table><tr>", "x<b>y</b>", 100_000, ""),
                TooComplex::ParserWork(LIMITS.parser_work),
            ),
            (
                "blocks 100 deep",
                page(
                    "",
                    &format!("{}x{}", "<div>".repeat(100), "</div>".repeat(100)),
                    300,
                    "",
                ),
                TooComplex::DepthSum(LIMITS.depth_sum),
            ),
        ];
        for (name, html, want) in cases {
            let want = match want {
                // Limits grow with pages over 1 MB.
                TooComplex::Nodes(_) => TooComplex::Nodes(LIMITS.for_page(html.len()).nodes),
                other => other,
            };
            assert_eq!(check(&html, &LIMITS), Err(want), "{name}");
            assert!(want.to_string().starts_with("page too complex: "), "{want}");
        }
    }

    #[test]
    fn attributes_are_counted_as_the_tokenizer_reads_them() {
        let many: String = (0..5_000).map(|i| format!("a{i}=1 ")).collect();
        let one_tag = format!("<html><body><div {many}>x</div></body></html>");
        assert_eq!(
            check(&one_tag, &LIMITS),
            Err(TooComplex::AttributePairs(LIMITS.attribute_pairs))
        );
        // `<html>` tags in the body add their attributes to the first one.
        let repeated: String = (0..100_000).map(|i| format!("<html a{i}=1>")).collect();
        assert!(matches!(
            check(&format!("<html><body>{repeated}"), &LIMITS),
            Err(TooComplex::ParserWork(_))
        ));
        for (tag, count) in [
            ("<a href=x>", 1),
            (r#"<a b="1"c='2' d=3/e f>"#, 4),
            (r#"<a title="x > y z w">"#, 1),
            ("<a b = 1 c>", 2),
            ("< a b c>", 0),
        ] {
            assert_eq!(attribute_pairs(tag), count * count, "{tag}");
        }
    }

    #[test]
    fn runs_of_siblings_are_measured() {
        let page = format!(
            "<html><body><div>{}</div><div>{}</div></body></html>",
            "<li>w</li>".repeat(12_000),
            "<br>".repeat(100)
        );
        let shape = check(&page, &LIMITS).expect("a list passes");
        // The two divs' children, each item's text, the body's two, the html's two (head and
        // body), the document's one.
        assert_eq!(
            shape.sibling_work,
            12_000 * 12_000 + 100 * 100 + 12_000 + 4 + 4 + 1
        );
    }

    #[test]
    fn normal_and_harmless_pages_pass() {
        let article = format!(
            "<html><head><title>t</title></head><body><nav><a href=/>Home</a></nav><article>{}</article></body></html>",
            STORY.repeat(2_000)
        );
        let shape = check(&article, &LIMITS).expect("an article passes");
        assert_eq!(shape.depth, 4);
        for (name, html) in [
            ("comments", page("", "<!--x-->", 50_000, STORY)),
            ("a long text run", page("<p>", "word ", 200_000, "")),
            ("unclosed <b> a few times", page("", "<b>", 100, STORY)),
            ("nested <a>", page("", "<a href=x>", 10_000, STORY)),
            ("a short deep block", page("", "<div>", 300, STORY)),
            (
                "<svg> with self-closing children",
                page("<svg>", "<g/>", 10_000, ""),
            ),
            (
                "a script full of tags",
                page("<script>", "<div a b c>", 10_000, "</script>"),
            ),
        ] {
            assert!(check(&html, &LIMITS).is_ok(), "{name}");
        }
    }

    #[test]
    fn limits_grow_with_pages_over_one_megabyte() {
        let small = LIMITS.for_page(1_000);
        assert_eq!(small.nodes, LIMITS.nodes);
        let big = LIMITS.for_page(3_000_000);
        assert_eq!(big.nodes, LIMITS.nodes * 3);
        assert_eq!(big.depth, LIMITS.depth);
    }
}
