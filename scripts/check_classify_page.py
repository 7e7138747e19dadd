"""The classifier page of a running `scratchllm serve` (a classifier model) in headless Chromium
(Debian's chromium and chromium-driver, driven by Selenium): type several texts, classify them,
and check the table against what the test got from POST /v1/classify (run by the serve tests).

    python scripts/check_classify_page.py URL SHOT EXPECTED_JSON
EXPECTED_JSON: {"texts": [...], "labels": [...], "probabilities": [[...], ...]} (one row per
text, in the order of the page's columns). Prints "classify page: ok" when the table agrees.
"""
import json
import sys

from headless_chromium import chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, shot, expected = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
driver = chromium()
try:
    driver.get(url)
    wait = WebDriverWait(driver, 30)
    assert "classifier" in driver.title, driver.title
    driver.find_element(By.ID, "texts").send_keys("\n".join(expected["texts"]))
    driver.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert len(rows) == len(expected["texts"]), len(rows)
    for row, text, label, probs in zip(rows, expected["texts"], expected["labels"], expected["probabilities"]):
        assert row.find_element(By.CSS_SELECTOR, ".text").text == text
        assert row.find_element(By.CSS_SELECTOR, ".label").text == label, (text, label)
        shown = [float(td.get_attribute("data-p")) for td in row.find_elements(By.CSS_SELECTOR, ".p")]
        assert all(abs(a - b) < 1e-6 for a, b in zip(shown, probs)), (shown, probs)
        assert abs(sum(shown) - 1) < 1e-4, shown
    driver.save_screenshot(shot)
    print("classify page: ok")
finally:
    driver.quit()
