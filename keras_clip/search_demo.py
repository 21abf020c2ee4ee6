"""The image-search demo: index the shapes val images with a CLIP, query them by caption, and
save a contact sheet of the results (``make demo`` runs it on the demo CLIP).

    python -m keras_clip.search_demo --model runs/demo/clip.keras --out runs/demo/search

Writes ``OUT/images/`` (the collection: shapes val images as PNG files, each with its caption
in ``<stem>.txt``), ``OUT/index/`` (``python -m keras_clip.embed``'s layout), and
``OUT/contact_sheet.png`` (one row per query: the top-k images with their scores, a green frame
where the image's own caption is the query's class). Prints, per query, the top results and
whether the best one shows what was asked. ``make demo-search`` then exports the model with
this index (the ``search`` signatures) and serves the search page (``export.serve --ui``).
"""

import argparse
import os

from PIL import Image, ImageDraw

from keras_clip.cli import add_tf_logs_flag, positive_int

QUERIES = ("a large red square", "a small blue star", "a yellow circle", "a green triangle",
           "a large purple diamond", "an orange star")


def write_collection(folder, num_images, image_size, seed=0):
    """Shapes val images as PNG files with ``<stem>.txt`` captions; returns the captions."""
    from keras_clip.data.shapes import generate_shapes

    data = generate_shapes(num_images, split="val", image_size=image_size, seed=seed)
    os.makedirs(folder, exist_ok=True)
    for i, (image, caption) in enumerate(zip(data["images"], data["captions"])):
        stem = os.path.join(folder, f"shape_{i:04d}")
        Image.fromarray(image).save(stem + ".png")
        with open(stem + ".txt", "w", encoding="utf-8") as f:
            f.write(caption + "\n")
    return data["captions"]


def matches(query, caption):
    """True when ``caption``'s first object is what ``query`` asks for (colour, shape, size)."""
    first = caption.split(" to the ")[0].split(" above ")[0].split(" below ")[0]
    words = [w for w in query.split() if w not in ("a", "an")]
    return all(w in first.split() for w in words)


def contact_sheet(path, queries, result, folder, thumb=96):
    """One row per query: its text, then the top-k images (``result``'s paths are relative to
    the collection ``folder``) with their scores; a green frame marks a match."""
    k = len(result["ids"][0])
    label_w, pad = 190, 6
    sheet = Image.new("RGB", (label_w + k * (thumb + pad), len(queries) * (thumb + 22) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for row, query in enumerate(queries):
        y = pad + row * (thumb + 22)
        draw.text((pad, y + thumb // 2 - 6), query, fill="black")
        for col in range(k):
            x = label_w + col * (thumb + pad)
            image = Image.open(os.path.join(folder, result["paths"][row][col]))
            image = image.convert("RGB").resize((thumb, thumb))
            sheet.paste(image, (x, y))
            good = matches(query, result["captions"][row][col] or "")
            draw.rectangle([x - 2, y - 2, x + thumb + 1, y + thumb + 1],
                           outline=(30, 160, 60) if good else (200, 200, 200), width=3)
            draw.text((x, y + thumb + 4), f"{result['scores'][row][col]:.3f}", fill="black")
    tmp = path + ".tmp.png"
    sheet.save(tmp)
    os.replace(tmp, path)


def run(model_path, out, num_images=200, k=5, queries=QUERIES):
    """Builds the collection and index (reusing an index already there), runs ``queries``,
    writes the contact sheet; returns ``(result, top1_correct)``."""
    from keras_clip.embed import embed_images
    from keras_clip.index import ImageIndex
    from keras_clip.model import CLIP
    from keras_clip.saving import load_model

    model = load_model(model_path, CLIP)
    images, index_dir = os.path.join(out, "images"), os.path.join(out, "index")
    if not os.path.isdir(images):
        write_collection(images, num_images, image_size=2 * model.image_size)
    if not os.path.isfile(os.path.join(index_dir, "manifest.json")):
        embed_images(model, images, index_dir, batch_size=50, progress=False)
    index = ImageIndex.load(index_dir, model=model)
    result = index.search(texts=list(queries), k=k)
    correct = 0
    for row, query in enumerate(queries):
        top = [(result["captions"][row][i], float(result["scores"][row][i])) for i in range(k)]
        ok = matches(query, top[0][0] or "")
        correct += ok
        print(f"{query!r:28} -> {'OK ' if ok else 'no '} " +
              "; ".join(f"{c} ({s:.3f})" for c, s in top[:3]))
    sheet = os.path.join(out, "contact_sheet.png")
    contact_sheet(sheet, list(queries), result, images)
    print(f"top-1 shows what was asked for {correct}/{len(queries)} queries; wrote {sheet}")
    return result, correct


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m keras_clip.search_demo", description=__doc__)
    p.add_argument("--model", required=True, help="a .keras CLIP")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-images", type=positive_int, default=200)
    p.add_argument("--k", type=positive_int, default=5)
    add_tf_logs_flag(p)
    args = p.parse_args(argv)
    run(args.model, args.out, args.num_images, args.k)


if __name__ == "__main__":
    main()
