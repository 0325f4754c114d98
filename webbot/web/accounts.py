"""Sign-in, sign-up, sign-out, the account page (password, API keys) and the admin page (people: add, disable).

Forms are Flask-WTF forms, so each carries the session's CSRF token. Signing in makes a
new session id (a session id planted before sign-in is worthless after it), and moves the
conversations this browser made while anonymous into the account. A failed form is shown
again with its status (400, 401, 403) and a sentence that says what to change.
"""

import hmac
import secrets

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from webbot.storage.users import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, UserError
from webbot.web.auth import Account, password_fingerprint, safe_next
from webbot.web.owners import current_owner, user_owner
from webbot.web.services import services
from webbot.web.visitors import known_owner

bp = Blueprint("auth", __name__)


class SignInForm(FlaskForm):
    name = StringField("Name", validators=[Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired("Type your password."),
                                                     Length(max=MAX_PASSWORD_CHARS)])


class SignUpForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired("Choose a name."), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired("Choose a password.")])
    confirm = PasswordField("Repeat the password", validators=[EqualTo("password", "The two passwords differ.")])


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired("Type your current password.")])
    password = PasswordField("New password", validators=[DataRequired("Choose a new password.")])
    confirm = PasswordField("Repeat the new password",
                            validators=[EqualTo("password", "The two new passwords differ.")])


class AddPersonForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired("Name the person."), Length(max=64)])
    password = PasswordField("Password (leave empty and one is made)")
    admin = BooleanField("Admin (can use this page)")


MADE_PASSWORD_BYTES = 12  # a password the admin page makes: 16 characters of URL-safe base64


class KeyForm(FlaskForm):
    name = StringField("Name", validators=[Length(max=64, message="Name the key in at most 64 characters.")])


def _mode() -> str:
    return current_app.config["WEBBOT_AUTH"]


def _form_errors(form: FlaskForm) -> list[str]:
    return [message for messages in form.errors.values() for message in messages]


def _start_session() -> None:
    """A fresh session for the browser that signs in: stored on the server under a new id, with a new CSRF token
    (one planted before sign-in is worth nothing after it)."""
    session.pop(current_app.config["WTF_CSRF_FIELD_NAME"], None)
    current_app.session_interface.regenerate(session)


@bp.route("/signin", methods=["GET", "POST"])
def signin():
    mode = _mode()
    if mode == "open":
        return redirect(url_for("pages.index"))
    form = SignInForm()
    target = safe_next(request.args.get("next"))
    errors, status = [], 200
    if form.validate_on_submit():
        if mode == "password":
            if hmac.compare_digest(form.password.data.encode(), current_app.config["WEBBOT_PASSWORD"].encode()):
                current_owner()  # household mode: the browser keeps its own conversations (its owner cookie)
                _start_session()
                session["household"] = password_fingerprint(current_app)
                return redirect(target)
            errors, status = ["Wrong password."], 401
        else:
            user = services().users.authenticate(form.name.data, form.password.data)
            if user is None:
                errors, status = ["Wrong name or password."], 401
            elif user["disabled"]:
                errors, status = ["This account is disabled; ask the server's admin."], 403
            else:
                anonymous = known_owner()
                _start_session()
                login_user(Account(user))
                _claim(anonymous)
                return redirect(target)
    elif request.method == "POST":
        errors, status = _form_errors(form), 400
    no_users = mode == "accounts" and services().users.count() == 0
    return render_template("signin.html", form=form, errors=errors, no_users=no_users), status


def _claim(anonymous: str | None) -> None:
    """Move the conversations this browser made before signing in (its owner cookie's) into the account."""
    if anonymous:
        moved = services().store.reassign(anonymous, current_owner())
        if moved:
            flash(f"{moved} conversation{'s' if moved != 1 else ''} from this browser "
                  f"{'are' if moved != 1 else 'is'} now in your account.")


@bp.route("/signup", methods=["GET", "POST"])
def signup():
    if _mode() != "accounts" or current_app.config["WEBBOT_SIGNUP"] != "open":
        abort(403, description="Sign-up is closed on this server; ask its admin for an account.")
    form = SignUpForm()
    errors, status = [], 200
    if form.validate_on_submit():
        try:
            user = services().users.create(form.name.data, form.password.data)
        except UserError as exc:
            errors, status = [str(exc)], 400
        else:
            anonymous = known_owner()
            _start_session()
            login_user(Account(user))
            _claim(anonymous)
            return redirect(url_for("pages.index"))
    elif request.method == "POST":
        errors, status = _form_errors(form), 400
    return render_template("signup.html", form=form, errors=errors), status


@bp.post("/signout")
def signout():
    logout_user()
    session.clear()
    return redirect(url_for("auth.signin") if _mode() != "open" else url_for("pages.index"))


def _signed_in_account() -> Account:
    if _mode() != "accounts" or not current_user.is_authenticated:
        abort(404, description="Accounts are off on this server (WEBBOT_AUTH is not accounts).")
    return current_user


@bp.get("/account")
def account(new_key: str | None = None, errors: list[str] | None = None, status: int = 200):
    user = _signed_in_account()
    key_form = KeyForm(formdata=None) if new_key else KeyForm()  # a key made: its name field starts empty again
    return render_template("account.html", password_form=PasswordForm(), key_form=key_form,
                           keys=services().users.keys(user.id), new_key=new_key, errors=errors or []), status


@bp.post("/account/password")
def change_password():
    user = _signed_in_account()
    users, form = services().users, PasswordForm()
    if not form.validate_on_submit():
        return account(errors=_form_errors(form), status=400)
    if users.authenticate(user.name, form.current.data) is None:
        return account(errors=["The current password is wrong."], status=400)
    try:
        users.set_password(user.id, form.password.data)
    except UserError as exc:
        return account(errors=[str(exc)], status=400)
    login_user(Account(users.get(user.id)))  # this browser stays in; every other session is out
    flash("Your password is changed; other browsers signed in as you are signed out.")
    return redirect(url_for("auth.account"))


@bp.post("/account/keys")
def create_key():
    user = _signed_in_account()
    form = KeyForm()
    if not form.validate_on_submit():
        return account(errors=_form_errors(form), status=400)
    try:
        token, _ = services().users.create_key(user.id, form.name.data)
    except UserError as exc:
        return account(errors=[str(exc)], status=400)
    return account(new_key=token)


@bp.post("/account/keys/<int:key_id>/revoke")
def revoke_key(key_id):
    user = _signed_in_account()
    if not services().users.revoke_key(user.id, key_id):
        abort(404, description="There is no such key on your account.")
    flash("The key is revoked; requests with it now get 401.")
    return redirect(url_for("auth.account"))


def _admin() -> Account:
    user = _signed_in_account()
    if not user.is_admin:
        abort(403, description="Only an admin can use this page.")
    return user


@bp.get("/admin")
def admin(form: AddPersonForm | None = None, added: dict | None = None, errors: list[str] | None = None,
          status: int = 200):
    _admin()
    app_services = services()
    people = [{**u, "conversations": app_services.store.count_conversations(user_owner(u["id"]))}
              for u in app_services.users.all()]
    return render_template("admin.html", people=people, form=form or AddPersonForm(formdata=None), added=added,
                           errors=errors or [], signup_open=current_app.config["WEBBOT_SIGNUP"] == "open",
                           min_password=MIN_PASSWORD_CHARS), status


@bp.post("/admin/users")
def add_person():
    """An admin adds a person; a password left empty is made here and shown once, like a new API key."""
    _admin()
    form = AddPersonForm()
    if not form.validate_on_submit():
        return admin(form=form, errors=_form_errors(form), status=400)
    password = form.password.data or secrets.token_urlsafe(MADE_PASSWORD_BYTES)
    try:
        person = services().users.create(form.name.data, password, admin=form.admin.data)
    except UserError as exc:
        return admin(form=form, errors=[str(exc)], status=400)
    made = None if form.password.data else password
    return admin(added={"name": person["name"], "admin": person["is_admin"], "password": made})


@bp.post("/admin/users/<int:user_id>/<any(disable, enable):action>")
def set_disabled(user_id, action):
    me = _admin()
    users = services().users
    target = users.get(user_id)
    if target is None:
        abort(404, description="There is no such user.")
    if target["id"] == me.id:
        abort(400, description="You cannot disable your own account; ask another admin.")
    users.set_disabled(user_id, action == "disable")
    flash(f"{target['name']} is {action}d" + (" and signed out everywhere." if action == "disable" else "."))
    return redirect(url_for("auth.admin"))
