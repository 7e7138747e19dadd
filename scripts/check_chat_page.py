"""The chat page of a running `scratchllm serve` in headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium): type a message, send it, wait for the streamed answer, save a
screenshot (run by the serve tests).

    python scripts/check_chat_page.py http://127.0.0.1:8080/ target/test-artifacts/chat-page.png [API_KEY]
With API_KEY (a server started with --api-key), the page must first ask for it; the key is typed
into its key field. Prints "chat page: ok" when the answer arrived.
"""
import sys

from headless_chromium import chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

url, shot = sys.argv[1], sys.argv[2]
key = sys.argv[3] if len(sys.argv) > 3 else None
driver = chromium()
try:
    driver.get(url)
    wait = WebDriverWait(driver, 30)
    if key:
        wait.until(lambda d: "API key" in d.find_element(By.ID, "status").text)
        driver.find_element(By.ID, "key").send_keys(key, Keys.TAB)
    wait.until(lambda d: "context" in d.find_element(By.ID, "status").text)
    driver.find_element(By.ID, "max_tokens").clear()
    driver.find_element(By.ID, "max_tokens").send_keys("24")
    box = driver.find_element(By.ID, "input")
    box.send_keys("Every effort moves you")
    driver.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-done='true']"))
    answer = driver.find_element(By.CSS_SELECTOR, ".assistant").text
    user = driver.find_element(By.CSS_SELECTOR, ".user").text
    assert user == "Every effort moves you", user
    assert answer.strip(), "empty answer"
    assert not driver.find_elements(By.CSS_SELECTOR, ".error"), driver.find_element(By.CSS_SELECTOR, ".error").text
    driver.save_screenshot(shot)
    print(f"answer: {answer!r}")
    print("chat page: ok")
finally:
    driver.quit()
